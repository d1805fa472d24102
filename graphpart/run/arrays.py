"""A user's arrays: checked as training data (numbers, labels 0..C-1, dtype), split, saved."""

from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from graphpart.errors import ConfigError, DataError
from graphpart.run.checkpoint import atomic_write
from graphpart.run.dataset import Dataset, check_dtype, split_indices


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


def from_arrays(
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
    dt = check_dtype(dtype)
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


def class_count(lo: float, hi: float, n_classes: int | None, n_samples: int) -> int | None:
    """The class count labels in [lo, hi] give, as the loader counts them (None: the loader
    would refuse them, or count them otherwise)."""
    limit = n_classes if n_classes is not None else n_samples
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi >= limit:
        return None
    count = n_classes if n_classes is not None else int(hi) + 1
    return count if count >= 2 else None


def save_arrays(data: Any, run_root: str) -> str:
    """Arrays (X, y) saved once, named by their content, as RUN_ROOT/data/arrays-<hash>.npz
    (absolute), to train on as a .npz file; the loader then checks them as it checks files."""
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise DataError(
            f"data of type {type(data).__name__}: expected a .npz or .csv path, 'digits', "
            "'synthetic', or a pair (X, y) of arrays"
        )
    arrays = {}
    for name, a in zip(("X", "y"), data, strict=True):
        try:
            arr = np.asarray(a)
        except (TypeError, ValueError) as e:
            raise DataError(f"data {name}: not an array ({type(a).__name__}: {e})") from None
        if arr.dtype.kind not in "biuf":
            raise DataError(f"data {name}: dtype {arr.dtype}, shape {arr.shape}; expected numbers")
        arrays[name] = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    for name, arr in arrays.items():
        h.update(f"{name}{arr.dtype.str}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    folder = Path(run_root).resolve() / "data"
    path = folder / f"arrays-{h.hexdigest()[:16]}.npz"
    if not path.is_file():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"run.dir={run_root!r}: cannot create {folder} ({e})") from None
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(path, buf.getvalue())
    return str(path)
