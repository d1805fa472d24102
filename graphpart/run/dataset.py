"""Data sets: a loaded split (Dataset), its shape (DataShape), what reading one takes (DataSpec)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphpart.errors import ConfigError, DataError
from graphpart.params import DTYPES

TASKS = ("classification", "regression")


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
    def of(cls, ds: Dataset) -> DataShape:
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


@dataclass(frozen=True)
class DataSpec:
    """What reading a data source takes: the source ("digits", "synthetic", a .npz or .csv
    path), the dtype, the task (None: a .csv decides by its labels, the others classify), the
    classes (a file's: None counts them from the labels; synthetic data's classes or targets,
    None: 10), the split (test_fraction, seed), and for "synthetic" its size, teacher and
    noise."""

    source: str
    dtype: str = "float32"
    task: str | None = None
    n_classes: int | None = None
    test_fraction: float = 0.2
    seed: int = 0
    n_samples: int = 10000
    n_features: int = 64
    hidden: tuple[int, ...] = (128,)
    noise: float = 0.0

    @property
    def name(self) -> str:
        """The data set's name: a file's stem, or the source."""
        return os.path.splitext(os.path.basename(self.source))[0]

    def split(self, n: int) -> tuple[int, int]:
        """(train, test) rows of `n` samples split by test_fraction."""
        k = n_test(n, self.test_fraction)
        return n - k, k


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise DataError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    return dt


def check_fraction(test_fraction: Any, where: str = "") -> float:
    ok = isinstance(test_fraction, (int, float)) and not isinstance(test_fraction, bool)
    if not ok or not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"{where}test_fraction={test_fraction!r}: must be a number in (0, 1)")
    return float(test_fraction)


def check_int(name: str, value: Any, minimum: int) -> int:
    if not is_int(value) or value < minimum:
        raise DataError(f"{name}={value!r}: must be an integer >= {minimum}")
    return int(value)


def n_test(n: int, test_fraction: float) -> int:
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
    k = n_test(n, test_fraction)
    if labels is None:
        test = perm[:k]
    else:
        lab = np.asarray(labels)[perm]
        order = np.argsort(lab, kind="stable")  # grouped by class, random within each class
        grouped = lab[order]
        counts = np.bincount(grouped)
        rank = np.arange(n) - (np.cumsum(counts) - counts)[grouped]
        key = (rank + 0.5) / counts[grouped]  # spreads each class evenly over [0, 1)
        pick = np.lexsort((rng.random(n), key))[:k]
        test = perm[order[pick]]
    mask = np.zeros(n, dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def batches(
    n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = False
) -> Iterator[np.ndarray]:
    """Index arrays of a permutation of range(n) seeded by (seed, epoch), batch_size at a time.

    The last batch is shorter unless drop_last, which skips it.
    """
    if not is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: must be a positive integer")
    if not is_int(n) or n < 0:
        raise ConfigError(f"n={n!r}: must be an integer >= 0")
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    stop = n - n % batch_size if drop_last else n
    return (perm[i : i + batch_size] for i in range(0, stop, batch_size))
