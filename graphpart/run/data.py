"""Data sources: one reader per format (digits, synthetic, .npz, .csv), giving shape and load.

`plan`, `graph` and every check made before a run starts read a source's shape only
(`shape_of`, cheap: a file's headers or one pass over its rows, never a copy of the features);
training loads it (`load`). Both go through the same reader, so they agree by construction.
A user's arrays train as a .npz (graphpart.run.session saves them once) and are checked, for
evaluation or prediction, by `check_samples`.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from graphpart.errors import DataError
from graphpart.run import csvfile, digits, npzfile
from graphpart.run import synthetic as synthetic_source
from graphpart.run.arrays import check_samples
from graphpart.run.csvfile import load_csv, read_csv
from graphpart.run.dataset import (
    TASKS,
    Dataset,
    DataShape,
    DataSpec,
    batches,
    split_indices,
)
from graphpart.run.digits import DIGITS_SCALE, load_digits
from graphpart.run.npzfile import load_npz
from graphpart.run.synthetic import synthetic

__all__ = [
    "DIGITS_SCALE",
    "SOURCES",
    "TASKS",
    "DataShape",
    "DataSpec",
    "Dataset",
    "Reader",
    "batches",
    "check_samples",
    "load",
    "load_csv",
    "load_digits",
    "load_npz",
    "read_csv",
    "read_samples",
    "reader_for",
    "scale_features",
    "shape_of",
    "split_indices",
    "synthetic",
]

SOURCES = ("digits", "synthetic", "<path>.npz", "<path>.csv")


class Reader(Protocol):
    """One data format: the shape of a source, read without loading it, and the source loaded;
    `shape(spec)` equals `DataShape.of(load(spec))`, and a source that cannot be loaded fails
    both with the same error."""

    def shape(self, spec: DataSpec) -> DataShape: ...

    def load(self, spec: DataSpec) -> Dataset: ...


def reader_for(source: str | os.PathLike) -> Reader:
    """The reader of `source`: "digits", "synthetic", or a path ending in .npz or .csv."""
    s = os.fspath(source) if isinstance(source, str | os.PathLike) else source
    if s == "digits":
        return digits
    if s == "synthetic":
        return synthetic_source
    if isinstance(s, str) and s.lower().endswith(".npz"):
        return npzfile
    if isinstance(s, str) and s.lower().endswith(".csv"):
        return csvfile
    raise DataError(f"data source {source!r} is not recognised; valid: {', '.join(SOURCES)}")


def load(source: str | os.PathLike, **options: Any) -> Dataset:
    """Load "digits", "synthetic", or a path ending in .npz or .csv; `options` are DataSpec's
    fields (each source reads the ones that apply to it: n_samples only "synthetic", ...)."""
    reader = reader_for(source)
    return reader.load(DataSpec(os.fspath(source), **options))


def shape_of(source: str | os.PathLike, **options: Any) -> DataShape:
    """The shape `load(source, **options)` would give, read without loading the features."""
    reader = reader_for(source)
    return reader.shape(DataSpec(os.fspath(source), **options))


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
        X, y = npzfile.samples(path, labels)
    elif low.endswith(".csv"):
        X, y = csvfile.samples(path, labels, n_features)
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
