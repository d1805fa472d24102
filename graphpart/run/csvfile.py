"""The .csv reader: one row per sample, the features then the label, or the file's shape alone.

The shape comes from one pass over the rows, parsing only the last column (for the labels'
range); a file the quick reading finds anything odd in is loaded, so that the loader's error
names its first bad line.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

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
from graphpart.run.npzfile import one_line


def load(spec: DataSpec) -> Dataset:
    """The data set `spec` names, loaded and split (task None: decided by the labels)."""
    return load_csv(
        spec.source, spec.dtype, spec.task, spec.n_classes, spec.test_fraction, spec.seed
    )


def shape(spec: DataSpec) -> DataShape:
    """What `load(spec)` would give, read a row at a time without keeping the rows."""
    dt = check_dtype(spec.dtype).name
    check_fraction(spec.test_fraction)
    quick = _quick_shape(spec, dt)
    return quick if quick is not None else DataShape.of(load(spec))


def samples(path: str, labels: bool, n_features: int) -> tuple[np.ndarray, np.ndarray | None]:
    """X (and the label column, with `labels`) of every row, unchecked: the file has
    n_features + 1 columns with the label last, or without labels possibly n_features."""
    A = read_csv(path)
    cols = A.shape[1]
    if cols == n_features + 1:
        return A[:, :-1], (A[:, -1] if labels else None)
    if cols == n_features and not labels:
        return A, None
    if labels:
        raise DataError(
            f"{path}: has {cols - 1} feature column(s) before its label column, but the "
            f"model takes {n_features} features (a CSV with labels has the features, then "
            f"the label last)"
        )
    raise DataError(
        f"{path}: has {cols} column(s), but the model takes {n_features} features "
        f"(give {n_features} columns, or {n_features + 1} with the label last)"
    )


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
        raise DataError(f"{invalid} ({problem or one_line(exc)})") from None
    except (OSError, csv.Error) as exc:
        raise DataError(f"{invalid} ({one_line(exc)})") from None
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
    dt = check_dtype(dtype)
    if task is not None and task not in TASKS:
        raise DataError(f"task={task!r}: must be one of {', '.join(TASKS)}")
    if n_classes is not None and task != "regression":
        check_int("n_classes", n_classes, 2)
    frac = check_fraction(test_fraction, where=f"{path}: ")
    A = read_csv(path)
    if A.shape[1] < 2:
        raise DataError(
            f"{path}: has {A.shape[1]} column; expected at least 2 (the features, then the label)"
        )
    X, y = A[:, :-1], A[:, -1]
    if task is None:
        whole = bool(np.all(np.isfinite(y) & (y == np.round(y))))
        task = "classification" if whole else "regression"
    return from_arrays(path, {"X": X, "y": y}, dt, task, n_classes, frac, seed)


def _quick_shape(spec: DataSpec, dt: str) -> DataShape | None:
    """The shape from a pass over the rows (None: something is odd)."""
    path, task, n_classes = spec.source, spec.task, spec.n_classes
    if (task is not None and task not in TASKS) or not os.path.isfile(path):
        return None
    width, n, lo, hi, whole = 0, 0, math.inf, -math.inf, True
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for i, (_, row) in enumerate(_csv_rows(f)):
                if i == 0 and any(x.strip() and not _is_number(x) for x in row):
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
    n_train, n_test = spec.split(n)
    if task == "regression":
        return DataShape(spec.name, width - 1, 1, None, n_train, n_test, dt)
    classes = class_count(lo, hi, n_classes, n) if whole else None
    if not classes:
        return None
    return DataShape(spec.name, width - 1, classes, classes, n_train, n_test, dt)
