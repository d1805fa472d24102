"""scikit-learn's digits (graphpart.run.digits).

Contract: 1797 x 64 samples in 10 classes, scaled to [0, 1], split (stratified) by the seed
alone; float64 on request; a Dataset's repr never dumps its arrays.
"""

from __future__ import annotations

import numpy as np

from graphpart.run import data


def test_digits_shapes_scaling_and_stratified_split():
    ds = data.load_digits()
    assert ds.name == "digits" and ds.n_classes == 10 and ds.n_outputs == 10
    assert ds.n_features == 64
    assert len(ds.X_train) + len(ds.X_test) == 1797
    assert len(ds.X_test) == round(1797 * 0.2)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert 0.0 <= ds.X_train.min() and ds.X_train.max() <= 1.0
    counts = np.bincount(ds.y_test, minlength=10)
    totals = counts + np.bincount(ds.y_train, minlength=10)
    assert np.all(np.abs(counts - 0.2 * totals) <= 1)  # every class ~20% in test


def test_digits_split_is_fixed_by_seed():
    a, b = data.load_digits(seed=3), data.load_digits(seed=3)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    c = data.load_digits(seed=4)
    assert not np.array_equal(a.X_test, c.X_test)


def test_digits_float64_and_repr_does_not_dump_arrays():
    ds = data.load_digits(dtype="float64", test_fraction=0.5)
    assert ds.X_train.dtype == np.float64
    assert abs(len(ds.X_test) - 1797 / 2) <= 1
    r = repr(ds)
    assert "digits" in r and "n_train" in r and "[" not in r and len(r) < 200
