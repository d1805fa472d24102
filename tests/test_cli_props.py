"""Property tests of the command line's contract for bad input (hypothesis).

Contract: whatever bad value a user gives, `graphpart train` refuses it before anything is
written: the exit code is 2, stderr is exactly one line and it starts `graphpart: error:`
(no usage text, no traceback), and the run directory (`--run-dir`, a fresh folder) does not
appear. The bad values are generated: for a selection of config keys set with
`--set section.key=VALUE` (and their flags), values of the wrong type (junk text, fractions
for integers, words for booleans), numbers out of range (zero or negative sizes and counts,
learning rates <= 0, momenta and fractions outside their interval, NaN and inf), names that
are not among the choices, unknown keys; and for `--data file.npz`, junk contents: NaN or
inf in X, values beyond float32, labels that are negative, fractional, NaN or beyond the
number of samples (up to 1e300), wrong shapes and counts, missing arrays, non-numeric
dtypes, no features, too few samples, and files that are not .npz archives at all.

Nothing here starts Ray or trains: every value is refused while the config or the data
loads. Examples are few (GRAPHPART_PROP_EXAMPLES=500 for a longer hunt) and the database is off, so
the module runs in a few seconds.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphpart.cli import main
from graphpart.engines import TRANSPORT_CHOICES
from graphpart.ir.ops import ACTIVATIONS, LOSSES
from graphpart.optim import OPTIMIZERS
from graphpart.params import DTYPES
from graphpart.plan.partition import STRATEGIES
from graphpart.plan.schedule import KINDS as SCHEDULES
from graphpart.run.config import SECTIONS

SETTINGS = settings(
    max_examples=int(os.environ.get("GRAPHPART_PROP_EXAMPLES", "25")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- bad values, by the kind of key ----------------------------------------------------------

# text without a decimal digit (of any script) that is not blank: int() refuses it, and
# float() refuses it or reads nan/inf, which every float key refuses too
NO_DIGITS = st.text(
    st.characters(blacklist_categories=("Nd", "Cs")), min_size=1, max_size=12
).filter(lambda s: s.strip() != "")
BAD_INT_WORDS = st.one_of(
    NO_DIGITS,
    st.floats(allow_nan=True, allow_infinity=True)
    .filter(lambda v: not (math.isfinite(v) and v == int(v)))
    .map(repr),
    st.sampled_from(["1.0", "2e3", "0x10", "1/2", "3 4", "[3]"]),
)


def bad_int(minimum: int) -> st.SearchStrategy[str]:
    """Integers below `minimum`, or text that is not an integer."""
    return st.one_of(st.integers(max_value=minimum - 1).map(str), BAD_INT_WORDS)


def bad_float(ok) -> st.SearchStrategy[str]:
    """Numbers outside `ok`, NaN and inf, or text that is not a number."""
    return st.one_of(
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not ok(v)).map(repr),
        st.sampled_from(["nan", "inf", "-inf", "1e999", "-1e999"]),
        NO_DIGITS,
    )


def bad_choice(options) -> st.SearchStrategy[str]:
    """Any text that is not one of the choices (the command line strips spaces)."""
    return st.text(max_size=16).filter(lambda s: s.strip() not in options)


BAD_BOOL = st.text(max_size=8).filter(
    lambda s: s.strip().lower() not in {"true", "false", "yes", "no", "on", "off", "1", "0"}
)
BAD_HIDDEN = st.one_of(
    st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=4)
    .filter(lambda v: min(v) < 1)
    .map(lambda v: ",".join(map(str, v))),
    NO_DIGITS.filter(lambda s: s.strip().removeprefix("[").removesuffix("]").strip() != ""),
)

BAD_VALUES: dict[str, st.SearchStrategy[str]] = {
    "train.epochs": bad_int(1),
    "train.batch_size": bad_int(1),
    "train.seed": bad_int(0),
    "train.lr": bad_float(lambda v: v > 0),
    "train.momentum": bad_float(lambda v: 0 <= v < 1),
    "train.optimizer": bad_choice(OPTIMIZERS),
    "train.dtype": bad_choice(DTYPES),
    "model.hidden": BAD_HIDDEN,
    "model.activation": bad_choice(ACTIVATIONS),
    "model.loss": bad_choice(LOSSES),
    "model.bias": BAD_BOOL,
    "model.weight_decay": bad_float(lambda v: v >= 0),
    "data.test_fraction": bad_float(lambda v: 0 < v < 1),
    "data.source": st.text(max_size=16).filter(
        lambda s: (
            s.strip() not in ("digits", "synthetic")
            and not s.strip().lower().endswith((".npz", ".csv"))
        )
    ),
    "pipeline.stages": bad_int(1),
    "pipeline.microbatches": bad_int(1),
    "pipeline.schedule": bad_choice(SCHEDULES),
    "pipeline.strategy": bad_choice(STRATEGIES),
    "pipeline.transport": bad_choice(TRANSPORT_CHOICES),
    "pipeline.memory_budget": NO_DIGITS,
    "run.name": st.text(max_size=8).map(lambda s: f"{s}/x"),
}
FLAGS = {  # flag -> its key: argparse reads these as integers or floats
    "--epochs": "train.epochs",
    "--batch-size": "train.batch_size",
    "--lr": "train.lr",
    "--stages": "pipeline.stages",
}


def _refused(capsys, tmp_path: Path, argv: list[str]) -> str:
    """Run the CLI; the contract for bad input holds; return the error line."""
    runs = tmp_path / "runs"
    before = sorted(tmp_path.iterdir())
    code = main(["train", "--run-dir", str(runs), "--no-progress", *argv])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("graphpart: error: "), (argv, err)
    assert out == ""
    assert not runs.exists() and sorted(tmp_path.iterdir()) == before, argv
    return lines[0]


@pytest.mark.slow  # in process, but a second or more: the slow lane
@SETTINGS
@given(data=st.data(), key=st.sampled_from(sorted(BAD_VALUES)))
def test_a_bad_config_value_is_one_line_and_writes_nothing(capsys, tmp_path, data, key):
    value = data.draw(BAD_VALUES[key], label=key)
    line = _refused(capsys, tmp_path, ["--set", f"{key}={value}"])
    assert key in line or "--set" in line


@pytest.mark.slow  # in process, but a second or more: the slow lane
@SETTINGS
@given(data=st.data(), flag=st.sampled_from(sorted(FLAGS)))
def test_a_bad_flag_value_is_one_line_and_writes_nothing(capsys, tmp_path, data, flag):
    key = FLAGS[flag]
    value = data.draw(BAD_VALUES[key], label=flag)
    line = _refused(capsys, tmp_path, [f"{flag}={value}"])
    assert flag in line or key in line


@SETTINGS
@given(
    section=st.sampled_from(sorted(SECTIONS)),
    key=st.text(max_size=12).filter(lambda s: "=" not in s),
    value=st.text(max_size=8),
)
@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_an_unknown_key_is_one_line_and_writes_nothing(capsys, tmp_path, section, key, value):
    if key.strip() in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        key += "_x"
    line = _refused(capsys, tmp_path, ["--set", f"{section}.{key}={value}"])
    assert "unknown key" in line or "override key" in line


# --- junk .npz contents ----------------------------------------------------------------------

CLASSIFICATION_KINDS = (
    "nan_x",
    "beyond_float32",
    "huge_label",
    "negative_label",
    "fractional_label",
    "nan_label",
    "x_not_2d",
    "y_not_1d",
    "count",
    "missing",
    "non_numeric",
    "no_features",
    "too_few",
    "test_features",
    "single_class",
    "not_npz",
)
REGRESSION_KINDS = (
    "nan_x",
    "beyond_float32",
    "nan_label",
    "y_beyond_float32",
    "x_not_2d",
    "count",
    "missing",
    "non_numeric",
    "no_features",
    "too_few",
    "test_features",
    "not_npz",
)


@st.composite
def junk_npz(draw, regression: bool) -> tuple[str, dict[str, np.ndarray] | bytes]:
    """(kind, arrays) of a .npz that cannot train, or (kind, bytes) of a file that is not one."""
    kind = draw(st.sampled_from(REGRESSION_KINDS if regression else CLASSIFICATION_KINDS))
    n, d = draw(st.integers(2, 24)), draw(st.integers(1, 4))
    i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))
    X = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal((n, d))
    y = (np.arange(n) % 2).astype(np.float64 if regression else np.int64)
    sign = draw(st.sampled_from([1.0, -1.0]))
    extra: dict[str, np.ndarray] = {}
    if kind == "nan_x":
        X[i, j] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif kind == "beyond_float32":
        X[i, j] = sign * draw(st.floats(3.5e38, 1.7e308))
    elif kind == "y_beyond_float32":
        y[i] = sign * draw(st.floats(3.5e38, 1.7e308))
    elif kind == "huge_label":
        dtype = draw(st.sampled_from(["int64", "uint64", "float64"]))
        y = y.astype(dtype)
        big = st.integers(n, 2**62) if dtype != "float64" else st.floats(n, 1e300)
        y[i] = draw(big)
    elif kind == "negative_label":
        y[i] = draw(st.integers(-(2**62), -1))
    elif kind == "fractional_label":
        y = y.astype(np.float64)
        y[i] = draw(st.floats(-1e6, 1e6).filter(lambda v: v != round(v)))
    elif kind == "nan_label":
        y = y.astype(np.float64)
        y[i] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif kind == "x_not_2d":
        X = draw(st.sampled_from([X[:, 0], X[..., None], np.float64(1.0)]))
    elif kind == "y_not_1d":
        y = y.reshape(n, 1) if draw(st.booleans()) else np.zeros((n, 2, 1), np.int64)
    elif kind == "count":
        y = np.concatenate([y, y])[: n + draw(st.sampled_from([-1, 1, n]))]
    elif kind == "missing":
        which = draw(st.sampled_from(["X", "y", "y_test", "X_test"]))
        if which in ("X_test", "y_test"):  # one of the pair without the other
            extra = {which: X if which == "X_test" else y}
        else:
            return kind, {"X": X} if which == "y" else {"y": y, "labels": y}
    elif kind == "non_numeric":
        bad = draw(st.sampled_from(["str", "complex", "datetime", "void"]))
        converted = {
            "str": lambda a: a.astype(str),
            "complex": lambda a: a.astype(complex),
            "datetime": lambda a: a.astype("datetime64[s]"),
            "void": lambda a: a.astype("V8"),
        }[bad](X if draw(st.booleans()) else y)
        if converted.shape == X.shape:
            X = converted
        else:
            y = converted
    elif kind == "no_features":
        X = np.zeros((n, 0))
    elif kind == "too_few":
        rows = draw(st.integers(0, 1))
        X, y = X[:rows], y[:rows]
    elif kind == "test_features":
        extra = {"X_test": np.zeros((2, d + 1)), "y_test": y[:2]}
    elif kind == "single_class":
        y = np.zeros(n, np.int64)
    elif kind == "not_npz":
        head = draw(st.sampled_from([b"", b"PK", b"\x93NUMPY", b"hello"]))
        return kind, head + draw(st.binary(max_size=64))
    return kind, {"X": X, "y": y, **extra}


@pytest.mark.slow  # in process, but a second or more: the slow lane
@SETTINGS
@given(regression=st.booleans(), data=st.data())
def test_a_junk_npz_is_one_line_and_writes_nothing(capsys, tmp_path, regression, data):
    kind, contents = data.draw(junk_npz(regression), label="npz")
    path = tmp_path / "junk.npz"
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    else:
        np.savez(path, **contents)
    loss = ["--loss", "mse"] if regression else []
    line = _refused(capsys, tmp_path, ["--data", str(path), *loss])
    assert str(path) in line, (kind, line)
