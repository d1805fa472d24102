"""Synthetic teacher-MLP data (graphpart.run.synthetic).

Contract: the documented shapes and dtypes, the same data for the same seed whatever the
chunk size it is generated in, regression targets with optional noise, and one-line
DataErrors for bad arguments.
"""

from __future__ import annotations

import numpy as np
import pytest

from graphpart.errors import DataError
from graphpart.run import data
from graphpart.run import synthetic as synthetic_source


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_synthetic_classification_shapes_and_determinism():
    ds = data.synthetic(n_samples=500, n_features=8, n_classes=4, hidden=(16, 16), seed=2)
    assert (len(ds.X_train), len(ds.X_test)) == (400, 100)
    assert ds.X_train.shape[1] == 8 and ds.n_classes == 4
    assert ds.y_train.dtype == np.int64 and set(np.unique(ds.y_train)) <= set(range(4))
    assert len(np.unique(ds.y_train)) > 1
    again = data.synthetic(n_samples=500, n_features=8, n_classes=4, hidden=(16, 16), seed=2)
    np.testing.assert_array_equal(ds.X_train, again.X_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)


def test_synthetic_regression_and_noise():
    clean = data.synthetic(n_samples=200, n_classes=3, task="regression", dtype="float64")
    assert clean.n_classes is None and clean.n_outputs == 3
    assert clean.y_train.shape == (160, 3) and clean.y_train.dtype == np.float64
    noisy = data.synthetic(n_samples=200, n_classes=3, task="regression", dtype="float64", noise=1)
    np.testing.assert_array_equal(clean.X_train, noisy.X_train)
    assert 0.5 < np.std(noisy.y_train - clean.y_train) < 1.5


def test_synthetic_independent_of_chunk_size(monkeypatch):
    ref = data.synthetic(n_samples=300, hidden=())
    monkeypatch.setattr(synthetic_source, "_CHUNK_ROWS", 7)
    small = data.synthetic(n_samples=300, hidden=())
    np.testing.assert_array_equal(ref.X_train, small.X_train)
    np.testing.assert_array_equal(ref.y_test, small.y_test)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"n_samples": 1}, "n_samples=1"),
        ({"task": "ranking"}, "task='ranking'"),
        ({"dtype": "float16"}, "dtype='float16'"),
        ({"hidden": (8, 0)}, "hidden=[8, 0]"),
        ({"test_fraction": 1.0}, "test_fraction=1.0"),
        ({"noise": -1.0}, "noise=-1.0"),
    ],
)
def test_synthetic_bad_arguments(kwargs, needle):
    with pytest.raises(DataError) as exc:
        data.synthetic(**kwargs)
    assert needle in _one_line(exc)
