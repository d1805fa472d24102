"""The .npz reader: a user's arrays X and y (optionally X_test, y_test), or their shape alone.

The shape comes from the .npy headers of the members, and for classification from a stream of
the labels (a chunk at a time, for their largest value); the features are never read. A file
the quick reading finds anything odd in is loaded, so that the loader's error names it.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator
from typing import IO

import numpy as np

from graphpart.errors import DataError
from graphpart.run.arrays import class_count, from_arrays
from graphpart.run.dataset import (
    TASKS,
    Dataset,
    DataShape,
    DataSpec,
    check_dtype,
    check_fraction,
    check_int,
)

_LABEL_CHUNK = 1 << 20  # labels read at once from a .npz member


def load(spec: DataSpec) -> Dataset:
    """The data set `spec` names, loaded and split (task None: classification)."""
    return load_npz(
        spec.source,
        spec.dtype,
        spec.task or "classification",
        spec.n_classes,
        spec.test_fraction,
        spec.seed,
    )


def shape(spec: DataSpec) -> DataShape:
    """What `load(spec)` would give, read without loading the features."""
    dt = check_dtype(spec.dtype).name
    check_fraction(spec.test_fraction)
    quick = _quick_shape(spec, dt)
    return quick if quick is not None else DataShape.of(load(spec))


def samples(path: str, labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Arrays X and y of a .npz (X_test and y_test are not read; y not when `labels` is False),
    unchecked."""
    arrays = read_npz(path)
    present = ", ".join(sorted(arrays)) or "none"
    for name in ("X", "y") if labels else ("X",):
        if name not in arrays:
            raise DataError(
                f"{path}: missing array {name!r}; arrays present: {present} (expected X"
                + (" and y)" if labels else ")")
            )
    return arrays["X"], arrays["y"] if labels else None


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
    dt = check_dtype(dtype)
    if task not in TASKS:
        raise DataError(f"task={task!r}: must be one of {', '.join(TASKS)}")
    if n_classes is not None and task == "classification":
        check_int("n_classes", n_classes, 2)
    frac = check_fraction(test_fraction, where=f"{path}: ")
    arrays = read_npz(path)
    present = ", ".join(sorted(arrays)) or "none"
    needed = ["X", "y"] + (["X_test", "y_test"] if {"X_test", "y_test"} & set(arrays) else [])
    for name in needed:
        if name not in arrays:
            raise DataError(
                f"{path}: missing array {name!r}; arrays present: {present} "
                f"(expected X and y, optionally X_test and y_test)"
            )
    return from_arrays(path, arrays, dt, task, n_classes, frac, seed)


def read_npz(path: str) -> dict[str, np.ndarray]:
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
        raise DataError(f"{invalid} ({one_line(exc)})") from None


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


# --- the quick reading: .npy headers and a stream of labels ---------------------------------


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


def _quick_shape(spec: DataSpec, dt: str) -> DataShape | None:
    """The shape from the .npy headers and a stream of the labels (None: something is odd)."""
    path, task, n_classes = spec.source, spec.task or "classification", spec.n_classes
    if task not in TASKS or not os.path.isfile(path):
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
    n_train, n_test = (xs[0], n_test) if has_test else spec.split(xs[0])
    if task == "regression":
        q = ys[1] if len(ys) == 2 else 1
        return DataShape(spec.name, xs[1], q, None, n_train, n_test, dt)
    span = _label_range(path, ["y", "y_test"] if has_test else ["y"])
    classes = span and class_count(*span, n_classes, n_train + n_test)
    if not classes:
        return None
    return DataShape(spec.name, xs[1], classes, classes, n_train, n_test, dt)
