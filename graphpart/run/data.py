"""Datasets: scikit-learn's digits, a synthetic teacher-MLP set, a user's .npz or .csv, batching."""

from __future__ import annotations

import csv
import inspect
import os
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphpart.errors import ConfigError, DataError
from graphpart.params import DTYPES

TASKS = ("classification", "regression")
SOURCES = ("digits", "synthetic", "<path>.npz", "<path>.csv")
DIGITS_SCALE = 16.0  # the digits' pixel values are 0..16; models see them divided by this
_CHUNK_ROWS = 1 << 16  # rows generated at once by `synthetic`


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split; n_classes is None for regression (y is float, N x q)."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int | None

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def n_outputs(self) -> int:
        if self.n_classes is not None:
            return self.n_classes
        return int(self.y_train.shape[1])

    @property
    def task(self) -> str:
        return "regression" if self.n_classes is None else "classification"

    def __repr__(self) -> str:
        kind = f"n_classes={self.n_classes}" if self.n_classes else f"n_outputs={self.n_outputs}"
        return (
            f"Dataset(name={self.name!r}, n_train={len(self.X_train)}, n_test={len(self.X_test)}, "
            f"n_features={self.n_features}, {kind}, dtype={self.X_train.dtype})"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise DataError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    return dt


def _check_fraction(test_fraction: Any, where: str = "") -> float:
    ok = isinstance(test_fraction, (int, float)) and not isinstance(test_fraction, bool)
    if not ok or not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"{where}test_fraction={test_fraction!r}: must be a number in (0, 1)")
    return float(test_fraction)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise DataError(f"{name}={value!r}: must be an integer >= {minimum}")
    return int(value)


def _n_test(n: int, test_fraction: float) -> int:
    return min(max(int(round(n * test_fraction)), 1), n - 1)


def split_indices(
    n: int, test_fraction: float, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) index arrays; stratified by `labels` (ints >= 0) when given.

    The same (n, test_fraction, seed, labels) always gives the same split. Each class puts about
    test_fraction of its samples in the test set; the test set has round(n * test_fraction)
    samples, at least 1, and the train set at least 1.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = _n_test(n, test_fraction)
    if labels is None:
        test = perm[:n_test]
    else:
        lab = np.asarray(labels)[perm]
        order = np.argsort(lab, kind="stable")  # grouped by class, random within each class
        grouped = lab[order]
        counts = np.bincount(grouped)
        rank = np.arange(n) - (np.cumsum(counts) - counts)[grouped]
        key = (rank + 0.5) / counts[grouped]  # spreads each class evenly over [0, 1)
        pick = np.lexsort((rng.random(n), key))[:n_test]
        test = perm[order[pick]]
    mask = np.zeros(n, dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def load_digits(dtype: str = "float32", test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 x 64, 10 classes), scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _sk_digits

    dt = _check_dtype(dtype)
    frac = _check_fraction(test_fraction)
    X, y = _sk_digits(return_X_y=True)
    X = (X / DIGITS_SCALE).astype(dt)
    y = y.astype(np.int64)
    train, test = split_indices(len(y), frac, seed, labels=y)
    return Dataset("digits", X[train], y[train], X[test], y[test], 10)


def _teacher(rng: np.random.Generator, sizes: list[int]) -> list[np.ndarray]:
    pairs = zip(sizes[:-1], sizes[1:], strict=True)
    return [rng.standard_normal((a, b)) / np.sqrt(a) for a, b in pairs]


def _fill(
    X: np.ndarray,
    y: np.ndarray,
    weights: list[np.ndarray],
    rng_x: np.random.Generator,
    rng_noise: np.random.Generator,
    classification: bool,
    noise: float,
) -> None:
    for start in range(0, len(X), _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, len(X))
        rng_x.standard_normal(dtype=X.dtype, out=X[start:stop])
        h = X[start:stop]
        for i, w in enumerate(weights):
            h = h @ w
            if i < len(weights) - 1:
                np.tanh(h, out=h)
        if classification:
            y[start:stop] = np.argmax(h, axis=1)
        else:
            if noise:
                h += noise * rng_noise.standard_normal(h.shape, dtype=h.dtype)
            y[start:stop] = h


def synthetic(
    n_samples: int = 10000,
    n_features: int = 64,
    n_classes: int = 10,
    hidden: tuple[int, ...] | list[int] = (128,),
    seed: int = 0,
    dtype: str = "float32",
    task: str = "classification",
    test_fraction: float = 0.2,
    noise: float = 0.0,
) -> Dataset:
    """Standard-normal inputs labelled by a random tanh teacher MLP (weights N(0, 1/fan_in)).

    Classification labels are the argmax of the teacher's n_classes logits; regression targets are
    its n_classes outputs plus noise * N(0, 1). Rows are generated in chunks straight into the
    train and test arrays (the first n_train rows are train), so memory is one copy of the data.
    """
    dt = _check_dtype(dtype)
    if task not in TASKS:
        raise DataError(f"task={task!r}: must be one of {', '.join(TASKS)}")
    classification = task == "classification"
    n = _check_int("n_samples", n_samples, 2)
    d = _check_int("n_features", n_features, 1)
    q = _check_int("n_classes", n_classes, 2 if classification else 1)
    hidden = list(hidden)
    if not all(_is_int(h) and h >= 1 for h in hidden):
        raise DataError(f"hidden={hidden!r}: sizes must be positive integers")
    frac = _check_fraction(test_fraction)
    ok_noise = isinstance(noise, (int, float)) and not isinstance(noise, bool)
    if not ok_noise or not 0.0 <= noise < float("inf"):
        raise DataError(f"noise={noise!r}: must be a finite number >= 0")

    weights = [w.astype(dt) for w in _teacher(np.random.default_rng([seed, 0]), [d, *hidden, q])]
    rng_x = np.random.default_rng([seed, 1])
    rng_noise = np.random.default_rng([seed, 2])
    n_test = _n_test(n, frac)
    parts = []
    for rows in (n - n_test, n_test):
        X = np.empty((rows, d), dtype=dt)
        y = np.empty(rows, np.int64) if classification else np.empty((rows, q), dtype=dt)
        _fill(X, y, weights, rng_x, rng_noise, classification, float(noise))
        parts += [X, y]
    return Dataset("synthetic", *parts, q if classification else None)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_npz(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file (expected a .npz file with arrays X and y)")
    invalid = f"{path}: not a valid .npz file"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise DataError(f"{invalid} (it holds a single .npy array; save with numpy.savez)")
        if not magic.startswith(b"PK"):
            raise DataError(f"{invalid} (not a zip archive; save with numpy.savez)")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {}
            for name in npz.files:
                try:
                    arrays[name] = npz[name]
                except ValueError as exc:
                    if "bject" not in str(exc):
                        raise
                    raise DataError(
                        f"{path}: {name} has non-numeric dtype object; "
                        f"expected real numbers (int or float)"
                    ) from None
            return arrays
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{invalid} ({_one_line(exc)})") from None


def _check_numeric(path: str, name: str, a: np.ndarray) -> None:
    if a.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: {name} has non-numeric dtype {a.dtype}; expected real numbers (int or float)"
        )
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        count = int(np.count_nonzero(bad))
        if count:
            first = _index(a.shape, int(np.argmax(bad)))
            raise DataError(
                f"{path}: {name} contains {count} NaN/inf value(s); first at index {first}"
            )


def _index(shape: tuple[int, ...], flat: int) -> Any:
    idx = np.unravel_index(flat, shape)
    return int(idx[0]) if len(idx) == 1 else tuple(int(i) for i in idx)


def _value(v: Any) -> str:
    """An array element as a message shows it: integers without a decimal point."""
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(v)


def _labels(
    path: str, name: str, y: np.ndarray, n_classes: int | None, n_samples: int
) -> np.ndarray:
    """Class labels as int64, each in 0..C-1: C is n_classes when given, else inferred as the
    largest label + 1, which may be at most the number of samples (a larger label would make
    an output per class for classes that cannot all have a sample; 1e12 would not fit in
    memory)."""
    if y.dtype.kind == "f":
        frac = y != np.round(y)
        if frac.any():
            i = int(np.argmax(frac))
            raise DataError(
                f"{path}: {name}[{i}] = {float(y[i])!r} is not an integer class label; "
                f"labels must be integers 0..C-1"
            )
    if len(y):
        neg = y < 0
        high = y >= (n_classes if n_classes is not None else n_samples)
        if neg.any():
            i = int(np.argmax(neg))
            raise DataError(
                f"{path}: {name}[{i}] = {_value(y[i])} is out of range; labels must be >= 0"
                + ("" if n_classes is None else f" and in 0..{n_classes - 1}")
            )
        if high.any():
            i = int(np.argmax(high))
            if n_classes is not None:
                raise DataError(
                    f"{path}: {name}[{i}] = {_value(y[i])} is out of range; labels must be "
                    f"in 0..{n_classes - 1} (n_classes={n_classes})"
                )
            raise DataError(
                f"{path}: {name}[{i}] = {_value(y[i])} is out of range; labels must be integers "
                f"0..C-1, and the number of classes C may be at most the number of samples "
                f"({n_samples}), so 0..{n_samples - 1} here; number the classes 0, 1, 2, ..."
            )
    return y.astype(np.int64)


def _cast(path: str, name: str, a: np.ndarray, dt: np.dtype) -> np.ndarray:
    """`a` as dtype `dt`, refusing finite values that the cast would turn into inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = a.astype(dt, copy=False)
    if out is not a and out.dtype.kind == "f":
        over = ~np.isfinite(out)
        count = int(np.count_nonzero(over))
        if count:
            flat = int(np.argmax(over))
            idx = _index(a.shape, flat)
            where = (
                f"{name}[{idx}]" if isinstance(idx, int) else f"{name}[{', '.join(map(str, idx))}]"
            )
            big = float(np.finfo(dt).max)
            wider = " or use train.dtype='float64'" if dt.itemsize < 8 else ""
            raise DataError(
                f"{path}: {where} = {_value(a.reshape(-1)[flat])} does not fit in {dt.name}, "
                f"whose largest magnitude is {big:.4g} ({count} value(s) beyond it); rescale "
                f"{name}{wider}"
            )
    return out


def _xy(path: str, arrays: dict, xname: str, yname: str, task: str, dt: np.dtype) -> tuple:
    X, y = arrays[xname], arrays[yname]
    if X.ndim != 2:
        raise DataError(
            f"{path}: {xname} has shape {X.shape}; expected 2-D (n_samples, n_features)"
        )
    want = "1-D (n_samples,)" if task == "classification" else "1-D or 2-D (n_samples, q)"
    if y.ndim not in ((1,) if task == "classification" else (1, 2)):
        raise DataError(f"{path}: {yname} has shape {y.shape}; expected {want} for {task}")
    if len(X) != len(y):
        raise DataError(
            f"{path}: {xname} has {len(X)} samples but {yname} has {len(y)}; counts must match"
        )
    if X.shape[1] < 1:
        raise DataError(f"{path}: {xname} has shape {X.shape}; expected at least 1 feature")
    _check_numeric(path, xname, X)
    _check_numeric(path, yname, y)
    X = _cast(path, xname, X, dt)
    if task == "regression":
        y = _cast(path, yname, y, dt)
        y = y.reshape(len(y), 1) if y.ndim == 1 else y
    return X, y


def load_npz(
    path: str,
    dtype: str = "float32",
    task: str = "classification",
    n_classes: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """A user's .npz with X (N x d) and y (labels 0..C-1, or N / N x q floats for regression).

    Optional X_test and y_test arrays give the test set (no split); otherwise the split is the
    same fixed (stratified, for classification) split as `load_digits`.
    """
    path = os.fspath(path)
    dt = _check_dtype(dtype)
    if task not in TASKS:
        raise DataError(f"task={task!r}: must be one of {', '.join(TASKS)}")
    if n_classes is not None and task == "classification":
        _check_int("n_classes", n_classes, 2)
    frac = _check_fraction(test_fraction, where=f"{path}: ")
    arrays = _read_npz(path)
    present = ", ".join(sorted(arrays)) or "none"
    needed = ["X", "y"] + (["X_test", "y_test"] if {"X_test", "y_test"} & set(arrays) else [])
    for name in needed:
        if name not in arrays:
            raise DataError(
                f"{path}: missing array {name!r}; arrays present: {present} "
                f"(expected X and y, optionally X_test and y_test)"
            )
    return _dataset(path, arrays, dt, task, n_classes, frac, seed)


def _dataset(
    path: str,
    arrays: dict[str, np.ndarray],
    dt: np.dtype,
    task: str,
    n_classes: int | None,
    frac: float,
    seed: int,
) -> Dataset:
    """A Dataset from a user's arrays X, y (and optionally X_test, y_test), checked and split."""
    X, y = _xy(path, arrays, "X", "y", task, dt)
    has_test = "X_test" in arrays
    if has_test:
        Xt, yt = _xy(path, arrays, "X_test", "y_test", task, dt)
        if Xt.shape[1] != X.shape[1]:
            raise DataError(
                f"{path}: X_test has {Xt.shape[1]} features but X has {X.shape[1]}; must match"
            )
        if task == "regression" and yt.shape[1] != y.shape[1]:
            raise DataError(
                f"{path}: y_test has {yt.shape[1]} outputs but y has {y.shape[1]}; must match"
            )
    need = 1 if has_test else 2
    if len(X) < need:
        raise DataError(f"{path}: X has {len(X)} sample(s); need at least {need}")
    if has_test and len(Xt) < 1:
        raise DataError(f"{path}: X_test has 0 samples; need at least 1 (or drop X_test, y_test)")

    name = os.path.splitext(os.path.basename(path))[0]
    if task == "regression":
        if not has_test:
            train, test = split_indices(len(X), frac, seed)
            X, Xt, y, yt = X[train], X[test], y[train], y[test]
        return Dataset(name, X, y, Xt, yt, None)

    n_samples = len(X) + (len(Xt) if has_test else 0)
    y = _labels(path, "y", y, n_classes, n_samples)
    if has_test:
        yt = _labels(path, "y_test", yt, n_classes, n_samples)
    if n_classes is None:
        n_classes = int(max(y.max(), yt.max() if has_test else 0)) + 1
        if n_classes < 2:
            raise DataError(
                f"{path}: y has only label 0; classification needs at least 2 classes: give "
                "--n-classes N (data.n_classes) if the file holds N classes, or train on "
                "real-valued targets with --loss mse (model.loss)"
            )
        seen = np.zeros(n_classes, dtype=bool)
        seen[y] = True
        if has_test:
            seen[yt] = True
        if not seen.all():
            gaps = np.flatnonzero(~seen)
            shown = ", ".join(map(str, gaps[:5])) + (", ..." if len(gaps) > 5 else "")
            raise DataError(
                f"{path}: the labels run 0..{n_classes - 1}, but class(es) {shown} have no "
                f"sample (a label past the classes meant, or labels counted from 1?); fix the "
                f"labels, or give --n-classes N (data.n_classes) to train N classes anyway"
            )
    if not has_test:
        train, test = split_indices(len(X), frac, seed, labels=y)
        X, Xt, y, yt = X[train], X[test], y[train], y[test]
    return Dataset(name, X, y, Xt, yt, int(n_classes))


# --- CSV files -------------------------------------------------------------------------------


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _csv_rows(f: Any) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each row that holds data or a header: blank lines and lines
    starting with # are skipped, as np.loadtxt skips them."""
    reader = csv.reader(f)
    for row in reader:
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        yield reader.line_num, row


def _csv_problem(path: str, skip: int) -> str | None:
    """The first malformed line of a CSV file after its first `skip` lines, in words."""
    width, width_line = 0, 0
    with open(path, encoding="utf-8-sig", newline="") as f:
        for line, row in _csv_rows(f):
            if line <= skip:
                continue
            for col, field in enumerate(row, 1):
                if not _is_number(field):
                    what = (
                        "an empty field (missing values are not supported)"
                        if not field.strip()
                        else f"{field.strip()!r} is not a number"
                    )
                    hint = (
                        " (fields are separated by commas)" if ";" in field or "\t" in field else ""
                    )
                    return f"line {line}, column {col}: {what}{hint}"
            if not width:
                width, width_line = len(row), line
            elif len(row) != width:
                return (
                    f"line {line} has {len(row)} columns but line {width_line} has {width}; "
                    "every row needs the same columns"
                )
    return None


def read_csv(path: str) -> np.ndarray:
    """Every data row of a CSV file as a 2-D float64 array (n_rows, n_columns).

    Fields are separated by commas (double quotes around a field are allowed); blank lines and
    lines starting with # are skipped; a first row with a field that is neither a number nor
    empty is a header and is skipped. A malformed file is a DataError naming its first bad line
    and column.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(
            f"{path}: no such file (expected a .csv file: one row per sample, the label last)"
        )
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, not a .csv file")
    invalid = f"{path}: not a valid CSV file"
    try:
        skip = 0
        with open(path, encoding="utf-8-sig", newline="") as f:
            for line, row in _csv_rows(f):
                if any(field.strip() and not _is_number(field) for field in row):
                    skip = line  # the header: a field that is neither a number nor empty
                break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": refused below
            A = np.loadtxt(
                path,
                delimiter=",",
                skiprows=skip,
                ndmin=2,
                quotechar='"',
                encoding="utf-8-sig",
                dtype=np.float64,
            )
    except UnicodeDecodeError:
        raise DataError(f"{invalid} (not UTF-8 text)") from None
    except ValueError as exc:
        problem = _csv_problem(path, skip)
        raise DataError(f"{invalid} ({problem or _one_line(exc)})") from None
    except (OSError, csv.Error) as exc:
        raise DataError(f"{invalid} ({_one_line(exc)})") from None
    if A.size == 0:
        raise DataError(
            f"{path}: no data rows (expected one row per sample: the features, then the label)"
        )
    return A


def load_csv(
    path: str,
    dtype: str = "float32",
    task: str | None = None,
    n_classes: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """A user's .csv: one row per sample, the features, then the label (or target) last.

    A header row (a first row with a field that is not a number) is skipped. The columns but the
    last are X, the last is y, checked and split as `load_npz` checks and splits X and y (a CSV
    has no separate test set). `task` None (the training loop gives none for a .csv):
    classification when every label is a whole number, regression otherwise.
    """
    path = os.fspath(path)
    dt = _check_dtype(dtype)
    if task is not None and task not in TASKS:
        raise DataError(f"task={task!r}: must be one of {', '.join(TASKS)}")
    if n_classes is not None and task != "regression":
        _check_int("n_classes", n_classes, 2)
    frac = _check_fraction(test_fraction, where=f"{path}: ")
    A = read_csv(path)
    if A.shape[1] < 2:
        raise DataError(
            f"{path}: has {A.shape[1]} column; expected at least 2 (the features, then the label)"
        )
    X, y = A[:, :-1], A[:, -1]
    if task is None:
        whole = bool(np.all(np.isfinite(y) & (y == np.round(y))))
        task = "classification" if whole else "regression"
    return _dataset(path, {"X": X, "y": y}, dt, task, n_classes, frac, seed)


# --- samples to evaluate or predict: a whole file or arrays, checked against a model ----------


def check_samples(
    where: str,
    X: Any,
    y: Any = None,
    *,
    n_features: int,
    dtype: str = "float32",
    task: str = "classification",
    n_outputs: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """X (and y, if given) checked as training data is, for a model of `n_features` inputs and
    `n_outputs` outputs (classes 0..n_outputs-1, or regression targets): X as `dtype`, y as
    int64 labels or (n, q) targets. A feature count that differs is a DataError naming both."""
    dt = _check_dtype(dtype)
    X = np.asarray(X)
    if X.ndim != 2:
        one = "; one sample is X.reshape(1, -1)" if X.ndim == 1 else ""
        raise DataError(
            f"{where}: X has shape {X.shape}; expected 2-D (n_samples, n_features){one}"
        )
    if X.shape[1] != n_features:
        raise DataError(f"{where}: X has {X.shape[1]} feature(s), but the model takes {n_features}")
    if len(X) == 0:
        raise DataError(f"{where}: X has 0 samples; need at least 1")
    _check_numeric(where, "X", X)
    X = _cast(where, "X", X, dt)
    if y is None:
        return X, None
    y = np.asarray(y)
    want = "1-D (n_samples,)" if task == "classification" else "1-D or 2-D (n_samples, q)"
    if y.ndim not in ((1,) if task == "classification" else (1, 2)):
        raise DataError(f"{where}: y has shape {y.shape}; expected {want} for {task}")
    if len(y) != len(X):
        raise DataError(f"{where}: X has {len(X)} samples but y has {len(y)}; counts must match")
    _check_numeric(where, "y", y)
    if task == "classification":
        return X, _labels(where, "y", y, n_outputs, len(y))
    y = _cast(where, "y", y, dt)
    y = y.reshape(len(y), 1) if y.ndim == 1 else y
    if n_outputs is not None and y.shape[1] != n_outputs:
        raise DataError(
            f"{where}: y has {y.shape[1]} target(s) per sample, but the model has {n_outputs}"
        )
    return X, y


def read_samples(
    path: str,
    *,
    n_features: int,
    labels: bool = True,
    dtype: str = "float32",
    task: str = "classification",
    n_outputs: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Every sample of a .npz (arrays X and y; X_test and y_test are not read) or a .csv, no
    split, checked by `check_samples`. With labels=False, y is not read: a .npz needs only X,
    and a .csv may have n_features columns, or n_features + 1 with the label last (ignored)."""
    path = os.fspath(path)
    low = path.lower()
    if low.endswith(".npz"):
        arrays = _read_npz(path)
        present = ", ".join(sorted(arrays)) or "none"
        for name in ("X", "y") if labels else ("X",):
            if name not in arrays:
                raise DataError(
                    f"{path}: missing array {name!r}; arrays present: {present} (expected X"
                    + (" and y)" if labels else ")")
                )
        X, y = arrays["X"], arrays["y"] if labels else None
    elif low.endswith(".csv"):
        A = read_csv(path)
        cols = A.shape[1]
        if cols == n_features + 1:
            X, y = A[:, :-1], (A[:, -1] if labels else None)
        elif cols == n_features and not labels:
            X, y = A, None
        elif labels:
            raise DataError(
                f"{path}: has {cols - 1} feature column(s) before its label column, but the "
                f"model takes {n_features} features (a CSV with labels has the features, then "
                f"the label last)"
            )
        else:
            raise DataError(
                f"{path}: has {cols} column(s), but the model takes {n_features} features "
                f"(give {n_features} columns, or {n_features + 1} with the label last)"
            )
    else:
        raise DataError(f"{path}: expected a .npz or .csv file")
    return check_samples(
        path, X, y, n_features=n_features, dtype=dtype, task=task, n_outputs=n_outputs
    )


def scale_features(source: str, X: np.ndarray) -> np.ndarray:
    """Features in the units of the data source a model was trained on, as that model sees them:
    digits' 0..16 pixel values divided by 16 (as `load_digits` scales them); other sources as
    they are."""
    return X / X.dtype.type(DIGITS_SCALE) if source == "digits" else X


def batches(
    n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = False
) -> Iterator[np.ndarray]:
    """Index arrays of a permutation of range(n) seeded by (seed, epoch), batch_size at a time.

    The last batch is shorter unless drop_last, which skips it.
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: must be a positive integer")
    if not _is_int(n) or n < 0:
        raise ConfigError(f"n={n!r}: must be an integer >= 0")
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    stop = n - n % batch_size if drop_last else n
    return (perm[i : i + batch_size] for i in range(0, stop, batch_size))


_LOADERS = {"digits": load_digits, "synthetic": synthetic}


def load(source: str, **kwargs: Any) -> Dataset:
    """Load "digits", "synthetic", or a path ending in .npz or .csv.

    Keyword arguments that the chosen loader does not take are ignored, so a caller can pass the
    union of options (e.g. n_samples is used only by "synthetic").
    """
    source_str = os.fspath(source) if isinstance(source, os.PathLike) else source
    if isinstance(source_str, str) and source_str in _LOADERS:
        fn = _LOADERS[source_str]
        args: tuple = ()
    elif isinstance(source_str, str) and source_str.lower().endswith(".npz"):
        fn = load_npz
        args = (source_str,)
    elif isinstance(source_str, str) and source_str.lower().endswith(".csv"):
        fn = load_csv
        args = (source_str,)
    else:
        raise DataError(f"data source {source!r} is not recognised; valid: {', '.join(SOURCES)}")
    params = inspect.signature(fn).parameters
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params})
