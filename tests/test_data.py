"""Data sources (graphpart.run.data): a reader per format, samples to evaluate on.

Contract: `load` dispatches "digits", "synthetic", .npz and .csv to their readers, each taking
the options that apply to it, and names the valid sources when given another; read_samples
reads a whole file against a model's feature count (naming both numbers when they differ);
scale_features is the digits' own scaling.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import npz_file, one_line, xy

from graphpart.errors import DataError
from graphpart.run import data


def test_load_dispatches_and_ignores_foreign_options(tmp_path):
    assert data.load("digits", n_samples=5, seed=1).name == "digits"
    syn = data.load("synthetic", n_samples=50, n_features=4, test_fraction=0.2)
    assert syn.n_features == 4 and len(syn.X_test) == 10
    X, y = xy()
    assert data.load(npz_file(tmp_path, X=X, y=y), n_samples=5).n_classes == 3


def test_load_unknown_source_lists_choices():
    with pytest.raises(DataError) as exc:
        data.load("mnist")
    msg = one_line(exc)
    assert "'mnist'" in msg and "digits" in msg and "synthetic" in msg and ".npz" in msg


def test_read_samples_reads_every_row_against_a_model(tmp_path):
    X, y = xy(n=10, d=3)
    np.savetxt(tmp_path / "xy.csv", np.column_stack([X, y]), delimiter=",", fmt="%.17g")
    np.savetxt(tmp_path / "x.csv", X, delimiter=",", fmt="%.17g")
    Xs, ys = data.read_samples(str(tmp_path / "xy.csv"), n_features=3, n_outputs=3)
    np.testing.assert_array_equal(Xs, X.astype(np.float32))
    np.testing.assert_array_equal(ys, y)
    Xs, ys = data.read_samples(str(tmp_path / "x.csv"), n_features=3, labels=False)
    assert ys is None and Xs.shape == (10, 3)
    with pytest.raises(DataError) as exc:
        data.read_samples(str(tmp_path / "x.csv"), n_features=3)
    assert "has 2 feature column(s) before its label column, but the model takes 3" in str(
        exc.value
    )
    with pytest.raises(DataError, match="y\\[0\\] = 0 is out of range"):
        data.check_samples("data", X, y, n_features=3, n_outputs=0)


def test_scale_features_is_the_digits_scaling():
    raw = np.array([[0.0, 16.0, 5.0]], dtype=np.float32)
    assert data.scale_features("digits", raw).tolist() == [[0.0, 1.0, 5 / 16]]
    assert data.scale_features("digits", raw).dtype == np.float32
    assert data.scale_features("mine.csv", raw) is raw
