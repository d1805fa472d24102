"""Contract of the Python API (graphpart.run.session, exported as gp.train, gp.load, gp.Run).

`make_config` takes a TOML path, a Config, a dict of sections or None (the embedded digits
config) plus dotted overrides, and refuses anything else in one line; `train` trains in
process and returns the Run of the directory it wrote; `load` reads config.toml, summary.json
and params.npz, and a missing folder, a folder that is not a run, a run without params.npz
(running, failed, interrupted: the message says which) and params that do not fit the config
are one-line RunErrors; `Run.evaluate()` on the run's own test split gives the run's last
test_loss and test_accuracy; evaluating (X, y) arrays, a .npz and a .csv of the same samples
gives the same figures; `predict` gives the reference forward pass's logits (class ids with
classes=True) of inputs in the training source's units (digits: 0..16, divided by 16 as
training did); a feature count that differs from the model's is a DataError naming both
numbers; regression runs evaluate to a loss only and refuse classes=True; `save_predictions`
never overwrites a file; the examples in the module's docstrings and in docs/data.md run as
written; `import graphpart` does not load the training loop (a cycle through workers/ if it
did), and every workers/ module still imports first in a fresh process.
"""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

import graphpart as gp
from graphpart.autodiff import forward
from graphpart.errors import ConfigError, DataError, GraphpartError, RunError
from graphpart.run import session
from graphpart.run.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = {"train.epochs": 1, "model.hidden": [16]}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> gp.Run:
    """One tiny digits run, shared by the tests that only read it."""
    runs = tmp_path_factory.mktemp("runs")
    return gp.train(overrides={**TINY, "run.dir": str(runs), "run.name": "d"}, log=lambda m: None)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# --- the exports -------------------------------------------------------------------------------


def test_top_level_exports_are_the_session_api():
    assert gp.train is session.train and gp.load is session.load and gp.Run is session.Run
    assert {"train", "load", "Run"} <= set(gp.__all__) and "train" in dir(gp)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gp.nope  # noqa: B018


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_import_graphpart_does_not_load_the_training_loop():
    r = _fresh("import sys, graphpart; print('graphpart.run.session' in sys.modules)")
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_every_workers_module_still_imports_first():
    """Ray's workers import workers.* first; graphpart/__init__ importing the training loop
    eagerly would come back to the half-imported module through the engines."""
    mods = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "workers").rglob("*.py")
        if "cuda" not in p.name
    )
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-c", f"import {m}"], cwd=ROOT, stderr=subprocess.PIPE, text=True
        )
        for m in mods
    }
    failed = {m: p.communicate(timeout=120)[1][-300:] for m, p in procs.items()}
    assert len(mods) >= 10
    assert not {m: err for m, err in failed.items() if procs[m].returncode}


# --- doctests ----------------------------------------------------------------------------------


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_module_docstring_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write runs/ in the working folder
    result = doctest.testmod(session, optionflags=doctest.ELLIPSIS, report=True)
    assert result.attempted >= 20 and result.failed == 0


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_docs_data_md_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testfile(str(ROOT / "docs" / "data.md"), module_relative=False)
    assert result.attempted >= 15 and result.failed == 0


# --- make_config -------------------------------------------------------------------------------


def test_make_config_takes_a_path_a_config_a_dict_or_the_default(tmp_path):
    default = session.make_config()
    assert default == load_config(str(ROOT / "examples" / "digits.toml"))
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochs = 7\n[model]\nhidden = [8]\n")
    from_path = session.make_config(path, {"train.lr": 0.5})
    assert (from_path.train.epochs, from_path.model.hidden, from_path.train.lr) == (7, (8,), 0.5)
    assert session.make_config(str(path)) == load_config(str(path))
    from_dict = session.make_config({"train": {"epochs": 7}, "model": {"hidden": [8]}})
    assert from_dict == load_config(str(path))
    changed = session.make_config(from_dict, {"model.hidden": "4,4", "train.seed": 3})
    assert changed.model.hidden == (4, 4) and changed.train.seed == 3 and changed.train.epochs == 7
    assert session.make_config(from_dict) is from_dict


@pytest.mark.parametrize(
    "config, overrides, needle",
    [
        (42, None, "config of type int: expected a path"),
        (None, {"train.epoch": 3}, "unknown key 'train.epoch'"),
        (Config(), {"train.epochs": 0}, "train.epochs=0"),
        ({"train": {"epochs": -1}}, None, "train.epochs=-1"),
        ("nope.toml", None, "nope.toml: config file not found"),
        (None, {"data.source": "mine.txt"}, "a path ending in .npz or .csv"),
    ],
)
def test_make_config_refuses_in_one_line(config, overrides, needle):
    with pytest.raises(ConfigError) as exc:
        session.make_config(config, overrides)
    assert needle in _one_line(exc)


# --- train and load ----------------------------------------------------------------------------


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_train_returns_the_run_it_wrote(tmp_path):
    seen = []
    run = gp.train(
        overrides={**TINY, "train.epochs": 2, "run.dir": str(tmp_path), "run.name": "r"},
        on_epoch=seen.append,
        log=lambda m: None,
    )
    assert isinstance(run, gp.Run) and run.path == tmp_path / "r"
    assert [m["epoch"] for m in seen] == [1, 2]
    assert run.summary == json.loads((tmp_path / "r" / "summary.json").read_text())
    assert run.config == load_config(str(tmp_path / "r" / "config.toml"))
    with np.load(tmp_path / "r" / "params.npz") as z:
        assert sorted(z.files) == sorted(run.params)
        for k in z.files:
            np.testing.assert_array_equal(z[k], run.params[k])
    assert repr(run).startswith(f"Run({str(run.path)!r}, completed, test_accuracy=")


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_load_equals_the_trained_run(digits_run):
    again = gp.load(str(digits_run.path))
    assert again.config == digits_run.config and again.summary == digits_run.summary
    assert (again.n_features, again.n_outputs, again.task) == (64, 10, "classification")


def _run_dir(tmp_path: Path, digits_run: gp.Run, state: dict | None) -> Path:
    """A copy of a run's config.toml without params.npz, with summary.json `state`."""
    path = tmp_path / "unfinished"
    path.mkdir()
    (path / "config.toml").write_text((digits_run.path / "config.toml").read_text())
    if state is not None:
        (path / "summary.json").write_text(json.dumps(state))
    return path


@pytest.mark.parametrize(
    "state, needle",
    [
        ({"state": "running", "pid": 4321, "host": "h1"}, "still running (pid 4321 on h1)"),
        ({"state": "failed", "message": "Diverged: the loss exploded"}, "failed: Diverged: the"),
        ({"state": "interrupted", "message": "stopped by Ctrl-C"}, "interrupted: stopped by"),
        (None, "no summary.json either"),
    ],
)
def test_a_run_without_params_says_why(tmp_path, digits_run, state, needle):
    path = _run_dir(tmp_path, digits_run, state)
    with pytest.raises(RunError) as exc:
        gp.load(path)
    msg = _one_line(exc)
    assert f"run directory {path}: no params.npz" in msg and needle in msg
    if state is not None:
        assert f"graphpart train --resume {path}" in msg


def test_load_refuses_what_is_not_a_finished_run(tmp_path, digits_run):
    with pytest.raises(RunError, match="no such folder"):
        gp.load(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="not a folder"):
        gp.load(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no config.toml there"):
        gp.load(tmp_path / "empty")
    path = _run_dir(tmp_path, digits_run, {"state": "completed"})
    np.savez(path / "params.npz", W1=np.zeros((16, 64), np.float32))
    with pytest.raises(RunError) as exc:
        gp.load(path)
    assert "does not fit" in _one_line(exc) and "it has W1; the model needs W1 to W2" in str(
        exc.value
    )
    np.savez(path / "params.npz", W1=np.zeros((16, 64), np.float32), W2=np.zeros((10, 16)))
    with pytest.raises(RunError) as exc:
        gp.load(path)
    assert "does not fit" in _one_line(exc) and "missing ['b1', 'b2']" in str(exc.value)
    (path / "params.npz").write_text("junk")
    with pytest.raises(RunError, match="not a readable parameter file"):
        gp.load(path)


# --- evaluate and predict ----------------------------------------------------------------------


def test_evaluate_on_the_test_split_gives_the_runs_last_figures(digits_run):
    m = digits_run.evaluate()
    assert m["samples"] == 359
    assert m["accuracy"] == digits_run.summary["test_accuracy"]
    assert m["loss"] == pytest.approx(digits_run.summary["test_loss"], rel=1e-5)


def test_arrays_npz_and_csv_evaluate_alike(tmp_path, digits_run):
    X, y = load_digits(return_X_y=True)
    X, y = X[:200], y[:200]
    np.savez(tmp_path / "d.npz", X=X, y=y)
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",", fmt="%g")
    a = digits_run.evaluate((X, y))
    assert a == digits_run.evaluate(str(tmp_path / "d.npz"))
    assert a == digits_run.evaluate(tmp_path / "d.csv")
    assert a["samples"] == 200 and set(a) == {"loss", "accuracy", "samples"}


def test_predict_is_the_reference_forward_of_scaled_inputs(digits_run):
    X, _ = load_digits(return_X_y=True)
    X = X[:50]
    logits = digits_run.predict(X)
    xs = (X / 16.0).astype(np.float32)  # digits' units, as the run trained on them
    batch = {"x": xs, "y": np.zeros(len(X), np.int64)}
    np.testing.assert_array_equal(logits, forward(digits_run.graph, digits_run.params, batch)["o"])
    assert logits.shape == (50, 10) and logits.dtype == np.float32
    np.testing.assert_array_equal(digits_run.predict(X, classes=True), logits.argmax(axis=1))


def test_predict_takes_files_with_or_without_a_label_column(tmp_path, digits_run):
    X, y = load_digits(return_X_y=True)
    X, y = X[:20], y[:20]
    want = digits_run.predict(X)
    np.savetxt(tmp_path / "x.csv", X, delimiter=",", fmt="%g")
    np.savetxt(tmp_path / "xy.csv", np.column_stack([X, y]), delimiter=",", fmt="%g")
    np.savez(tmp_path / "x.npz", X=X)
    for name in ("x.csv", "xy.csv", "x.npz"):
        np.testing.assert_array_equal(digits_run.predict(tmp_path / name), want)


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda r: r.predict(np.zeros((3, 10))), "X has 10 feature(s), but the model takes 64"),
        (lambda r: r.evaluate((np.zeros((3, 63)), np.zeros(3, int))), "63 feature(s)"),
        (lambda r: r.predict(np.zeros(64)), "X.reshape(1, -1)"),
        (lambda r: r.predict(np.zeros((0, 64))), "0 samples"),
        (lambda r: r.predict(np.full((2, 64), np.nan)), "NaN"),
        (lambda r: r.evaluate((np.zeros((3, 64)), [0, 1, 10])), "y[2] = 10 is out of range"),
        (lambda r: r.evaluate((np.zeros((3, 64)), [0, 1])), "X has 3 samples but y has 2"),
        (lambda r: r.evaluate(np.zeros((3, 64))), "expected a .npz or .csv path, or a pair"),
        (lambda r: r.evaluate("data.txt"), "expected a .npz or .csv file"),
    ],
)
def test_bad_samples_are_one_line_data_errors(digits_run, call, needle):
    with pytest.raises(DataError) as exc:
        call(digits_run)
    assert needle in _one_line(exc)


def test_files_that_do_not_fit_the_model_name_both_numbers(tmp_path, digits_run):
    np.savetxt(tmp_path / "narrow.csv", np.zeros((3, 11)), delimiter=",")
    with pytest.raises(DataError) as exc:
        digits_run.evaluate(tmp_path / "narrow.csv")
    assert "has 10 feature column(s) before its label column, but the model takes 64" in str(
        exc.value
    )
    with pytest.raises(DataError) as exc:
        digits_run.predict(tmp_path / "narrow.csv")
    assert "has 11 column(s), but the model takes 64 features" in _one_line(exc)
    np.savez(tmp_path / "noy.npz", X=np.zeros((3, 64)))
    with pytest.raises(DataError, match="missing array 'y'; arrays present: X"):
        digits_run.evaluate(tmp_path / "noy.npz")


def test_a_regression_run(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 3))
    Y = np.column_stack([X @ [1.0, -2.0, 0.5], X[:, 0] ** 2])
    np.savez(tmp_path / "reg.npz", X=X, y=Y)
    run = gp.train(
        overrides={
            "data.source": str(tmp_path / "reg.npz"),
            "model.loss": "mse",
            "model.hidden": [8],
            "train.epochs": 2,
            "run.dir": str(tmp_path / "runs"),
        },
        log=lambda m: None,
    )
    assert run.task == "regression" and run.n_outputs == 2
    m = run.evaluate()
    assert set(m) == {"loss", "samples"} and m["samples"] == 24
    assert m["loss"] == pytest.approx(run.summary["test_loss"], rel=1e-5)
    assert run.predict(X).shape == (120, 2)
    assert run.evaluate((X, Y))["samples"] == 120
    with pytest.raises(DataError, match="y has 1 target"):
        run.evaluate((X, Y[:, 0]))
    with pytest.raises(GraphpartError, match="is a regression"):
        run.predict(X, classes=True)


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_evaluate_names_a_training_file_it_cannot_find(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    X = np.random.default_rng(0).standard_normal((40, 2))
    np.savez("mine.npz", X=X, y=(X[:, 0] > 0).astype(int))
    run = gp.train(overrides={"data.source": "mine.npz", **TINY}, log=lambda m: None)
    assert run.evaluate()["samples"] == 8
    monkeypatch.chdir(ROOT)
    with pytest.raises(DataError) as exc:
        gp.load(tmp_path / run.path).evaluate()
    assert "mine.npz: no such file; run" in _one_line(exc) and "relative to the folder" in str(
        exc.value
    )


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_train_takes_arrays_and_settings_as_keywords(tmp_path):
    """gp.train((X, y), epochs=..., hidden=16, ...): arrays saved once, by content, under
    RUN_DIR/data/ and named by the run's config (so evaluate reloads its test split); any
    config key by its last name; predict(proba=True) gives probabilities."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 5))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 1)
    quiet = dict(log=lambda m: None, dir=str(tmp_path))
    run = gp.train((X, y), epochs=2, hidden=16, batch_size=30, name="a", **quiet)
    assert run.config.model.hidden == (16,) and run.config.train.batch_size == 30
    assert (
        run.n_features == 5 and run.n_outputs == 3 and run.summary["steps"] == 2 * 4
    )  # 96 rows: 30+30+30+6
    source = Path(run.config.data.source)
    assert source.parent == tmp_path.resolve() / "data" and source.suffix == ".npz"
    again = gp.train(data=(X, y), epochs=1, hidden=16, name="b", **quiet)
    assert again.config.data.source == str(source)  # the same arrays: the same file
    assert run.evaluate()["samples"] == 24
    p = run.predict(X[:4], proba=True)
    assert p.shape == (4, 3) and np.allclose(p.sum(axis=1), 1.0)
    assert np.array_equal(p.argmax(axis=1), run.predict(X[:4], classes=True))


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: gp.train(stage=2), "train(stage=...): not a setting; did you mean stages"),
        (lambda: gp.train(np.zeros((300, 300))), "config of type ndarray: expected a path"),
        (lambda: gp.train(data=(np.array(["a"] * 3), [0, 1, 0])), "data X: dtype <U1"),
        (lambda: gp.train(data=[1, 2, 3]), "data of type list: expected"),
    ],
)
def test_train_refusals_name_types_never_arrays(call, needle):
    """Bad arguments to gp.train are one line naming the setting or type, no array printed."""
    with pytest.raises(GraphpartError) as e:
        call()
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and "[[" not in msg and "0. 0." not in msg


def test_proba_is_refused_for_regression_and_with_classes(tmp_path):
    """proba=True on a regression run, or with classes=True: one-line errors."""
    X = np.random.default_rng(0).standard_normal((40, 3))
    run = gp.train(
        data=(X, X[:, :1]), loss="mse", epochs=1, hidden=4, dir=str(tmp_path), log=lambda m: None
    )
    with pytest.raises(GraphpartError, match="proba=True: run .* is a regression"):
        run.predict(X, proba=True)
    cls = gp.train(epochs=1, hidden=4, dir=str(tmp_path), log=lambda m: None)
    with pytest.raises(GraphpartError, match="ask for one of them"):
        cls.predict(np.zeros((1, 64)), classes=True, proba=True)
