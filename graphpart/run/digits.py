"""scikit-learn's handwritten digits (shipped with it: no download), or their shape alone."""

from __future__ import annotations

import numpy as np

from graphpart.run.dataset import (
    Dataset,
    DataShape,
    DataSpec,
    check_dtype,
    check_fraction,
    split_indices,
)

DIGITS = (1797, 64, 10)  # samples, features, classes
DIGITS_SCALE = 16.0  # the digits' pixel values are 0..16; models see them divided by this


def load(spec: DataSpec) -> Dataset:
    """The digits, split as `spec` says."""
    return load_digits(spec.dtype, spec.test_fraction, spec.seed)


def shape(spec: DataSpec) -> DataShape:
    """What `load(spec)` would give, known without loading."""
    dt = check_dtype(spec.dtype).name
    check_fraction(spec.test_fraction)
    n, d, c = DIGITS
    return DataShape("digits", d, c, c, *spec.split(n), dt)


def load_digits(dtype: str = "float32", test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 x 64, 10 classes), scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _sk_digits

    dt = check_dtype(dtype)
    frac = check_fraction(test_fraction)
    X, y = _sk_digits(return_X_y=True)
    X = (X / DIGITS_SCALE).astype(dt)
    y = y.astype(np.int64)
    train, test = split_indices(len(y), frac, seed, labels=y)
    return Dataset("digits", X[train], y[train], X[test], y[test], 10)
