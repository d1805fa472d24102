"""The shape of a data source (features, outputs, samples, dtype), read without loading its data.

`plan`, `graph` and every check made before a run starts need only a data set's shape, not its
values: "digits" has a known shape, "synthetic" takes its shape from the config, a .npz gives its
arrays' shapes in their .npy headers (class labels are streamed, a chunk at a time, for their
largest value), and a .csv is read a row at a time for its columns, rows and largest label.
Only the labels of a .npz or .csv are read, never the features, and no copy of the data is made.
A file the quick reading finds anything odd in (a missing array, a label that is not a whole
number in range, a malformed line, ...) is loaded by graphpart.run.data, whose error names the
problem exactly as training would.
"""

from __future__ import annotations

import csv
import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

from graphpart.errors import DataError
from graphpart.run import data as gdata

DIGITS = (1797, 64, 10)  # scikit-learn's digits: samples, features, classes
_LABEL_CHUNK = 1 << 20  # labels read at once from a .npz member


@dataclass(frozen=True)
class DataShape:
    """What a model and a plan need of a data set: its widths, its split sizes and its dtype
    (n_classes is None for regression, whose n_outputs targets are real numbers)."""

    name: str
    n_features: int
    n_outputs: int
    n_classes: int | None
    n_train: int
    n_test: int
    dtype: str

    @property
    def n_samples(self) -> int:
        return self.n_train + self.n_test

    @property
    def task(self) -> str:
        return "regression" if self.n_classes is None else "classification"

    @classmethod
    def of(cls, ds: gdata.Dataset) -> DataShape:
        """The shape of a loaded data set."""
        return cls(
            ds.name,
            ds.n_features,
            ds.n_outputs,
            ds.n_classes,
            len(ds.X_train),
            len(ds.X_test),
            ds.X_train.dtype.name,
        )


def shape_of(
    source: str,
    *,
    dtype: str = "float32",
    task: str | None = "classification",
    n_samples: int = 10000,
    n_features: int = 64,
    n_classes: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DataShape:
    """The shape `graphpart.run.data.load(source, ...)` would give, with the same arguments
    (`n_samples` and `n_features` apply to "synthetic" only; `n_classes` is the synthetic set's
    classes or targets, a file's classes when given), read without loading the features."""
    dt = gdata._check_dtype(dtype).name
    frac = gdata._check_fraction(test_fraction)
    source = os.fspath(source)
    kw = dict(dtype=dtype, test_fraction=test_fraction, seed=seed, task=task)
    if source == "digits":
        n, d, c = DIGITS
        return DataShape("digits", d, c, c, n - gdata._n_test(n, frac), gdata._n_test(n, frac), dt)
    if source == "synthetic":
        if task not in gdata.TASKS:
            raise DataError(f"task={task!r}: must be one of {', '.join(gdata.TASKS)}")
        n = gdata._check_int("n_samples", n_samples, 2)
        d = gdata._check_int("n_features", n_features, 1)
        q = gdata._check_int("n_classes", 10 if n_classes is None else n_classes, 1)
        if task == "classification":
            q = gdata._check_int("n_classes", q, 2)
        n_test = gdata._n_test(n, frac)
        classes = q if task == "classification" else None
        return DataShape("synthetic", d, q, classes, n - n_test, n_test, dt)
    low = source.lower()
    if low.endswith(".npz"):
        quick = _npz_shape(source, task or "classification", n_classes, frac, dt)
    elif low.endswith(".csv"):
        quick = _csv_shape(source, task, n_classes, frac, dt)
    else:
        quick = None
    if quick is not None:
        return quick
    # something odd (or an unknown source): the loader judges, with its exact message
    return DataShape.of(gdata.load(source, n_classes=n_classes, **kw))


def _name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _split(n: int, has_test: bool, n_test: int, frac: float) -> tuple[int, int]:
    return (n, n_test) if has_test else (n - gdata._n_test(n, frac), gdata._n_test(n, frac))


def _classes(lo: float, hi: float, n_classes: int | None, n_samples: int) -> int | None:
    """The class count labels in [lo, hi] give, as the loader counts them (None: the loader
    would refuse them, or count them otherwise)."""
    limit = n_classes if n_classes is not None else n_samples
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi >= limit:
        return None
    count = n_classes if n_classes is not None else int(hi) + 1
    return count if count >= 2 else None


# --- .npz: the .npy headers of its members, and a stream of its labels ------------------------


def _header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]] | None:
    """{array name: (shape, dtype)} of a .npz's members (None: not a readable .npz)."""
    try:
        with zipfile.ZipFile(path) as zf:
            out = {}
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    shape, _, dt = _header(f)
                out[info.filename[:-4]] = (tuple(shape), dt)
            return out
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _label_chunks(path: str, name: str) -> Iterator[np.ndarray]:
    """The array `name` of a .npz, a chunk of its elements at a time (any order: labels only
    need their range)."""
    with zipfile.ZipFile(path) as zf, zf.open(name + ".npy") as f:
        shape, _, dt = _header(f)
        left = math.prod(shape)
        while left:
            k = min(left, _LABEL_CHUNK)
            buf = f.read(k * dt.itemsize)
            if len(buf) != k * dt.itemsize:
                raise EOFError(f"{name} is cut short")
            yield np.frombuffer(buf, dtype=dt)
            left -= k


def _label_range(path: str, names: list[str]) -> tuple[float, float] | None:
    """(smallest, largest) label of the arrays `names`; None if one is not a whole number."""
    lo, hi = math.inf, -math.inf
    try:
        for name in names:
            for a in _label_chunks(path, name):
                if not a.size:
                    continue
                if a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a))):
                    return None
                lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return lo, hi


def _npz_shape(
    path: str, task: str, n_classes: int | None, frac: float, dt: str
) -> DataShape | None:
    if task not in gdata.TASKS or not os.path.isfile(path):
        return None
    heads = _npz_headers(path)
    if heads is None or "X" not in heads or "y" not in heads:
        return None
    has_test = "X_test" in heads or "y_test" in heads
    names = ["X", "y"] + (["X_test", "y_test"] if has_test else [])
    if any(n not in heads or heads[n][1].kind not in "biuf" for n in names):
        return None
    (xs, _), (ys, _) = heads["X"], heads["y"]
    y_dims = (1,) if task == "classification" else (1, 2)
    if len(xs) != 2 or xs[1] < 1 or len(ys) not in y_dims or xs[0] != ys[0]:
        return None
    n_test = 0
    if has_test:
        (ts, _), (us, _) = heads["X_test"], heads["y_test"]
        if len(ts) != 2 or ts[1] != xs[1] or len(us) not in y_dims or ts[0] != us[0] or not ts[0]:
            return None
        if task == "regression" and (us[1:] or (1,)) != (ys[1:] or (1,)):
            return None
        n_test = ts[0]
    if xs[0] < (1 if has_test else 2):
        return None
    n_train, n_test = _split(xs[0], has_test, n_test, frac)
    if task == "regression":
        q = ys[1] if len(ys) == 2 else 1
        return DataShape(_name(path), xs[1], q, None, n_train, n_test, dt)
    span = _label_range(path, ["y", "y_test"] if has_test else ["y"])
    classes = span and _classes(*span, n_classes, n_train + n_test)
    if not classes:
        return None
    return DataShape(_name(path), xs[1], classes, classes, n_train, n_test, dt)


# --- .csv: a row at a time, the last column parsed ----------------------------------------------


def _csv_shape(
    path: str, task: str | None, n_classes: int | None, frac: float, dt: str
) -> DataShape | None:
    if (task is not None and task not in gdata.TASKS) or not os.path.isfile(path):
        return None
    width, n, lo, hi, whole = 0, 0, math.inf, -math.inf, True
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for i, (_, row) in enumerate(gdata._csv_rows(f)):
                if i == 0 and any(x.strip() and not gdata._is_number(x) for x in row):
                    continue  # the header
                if not width:
                    width = len(row)
                if len(row) != width:
                    return None
                v = float(row[-1])
                n += 1
                lo, hi = min(lo, v), max(hi, v)
                whole = whole and math.isfinite(v) and v == round(v)
    except (OSError, ValueError, UnicodeDecodeError, csv.Error):
        return None
    if width < 2 or n < 2:
        return None
    task = task or ("classification" if whole else "regression")
    n_train, n_test = _split(n, False, 0, frac)
    if task == "regression":
        return DataShape(_name(path), width - 1, 1, None, n_train, n_test, dt)
    classes = _classes(lo, hi, n_classes, n) if whole else None
    if not classes:
        return None
    return DataShape(_name(path), width - 1, classes, classes, n_train, n_test, dt)


def dataset_matches(ds: gdata.Dataset, shape: DataShape) -> str | None:
    """How a loaded data set differs from the shape read before (None: it does not)."""
    got = DataShape.of(ds)
    for field in ("n_features", "n_outputs", "n_classes", "n_train", "n_test"):
        if getattr(got, field) != getattr(shape, field):
            return f"{field} is {getattr(got, field)}, its shape said {getattr(shape, field)}"
    return None
