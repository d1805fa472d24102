"""The .npz reader (graphpart.run.npzfile).

Contract: a .npz of X and y (optionally X_test, y_test) loads to a checked, split Dataset
(classes inferred from the labels, or given); every malformed file raises a one-line DataError
naming the file and the offending array or value (a missing file or array, a bad shape, a
non-numeric or non-finite value, a label that is not a whole number in range, a value beyond
the dtype, too few samples, a bad test fraction).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import npz_file, one_line, xy

from graphpart.errors import DataError
from graphpart.run import data


def test_npz_classification_infers_classes_and_splits(tmp_path):
    X, y = xy(n=40, classes=4)
    ds = data.load_npz(npz_file(tmp_path, X=X, y=y), test_fraction=0.25)
    assert ds.n_classes == 4 and ds.name == "d"
    assert (len(ds.X_train), len(ds.X_test)) == (30, 10)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert sorted(np.bincount(ds.y_test)) == [2, 2, 3, 3]  # stratified: 2.5 per class


def test_npz_explicit_test_set_and_float_integer_labels(tmp_path):
    X, y = xy(n=10)
    path = npz_file(tmp_path, X=X, y=y.astype(float), X_test=X[:4], y_test=y[:4])
    ds = data.load_npz(path, n_classes=5)
    assert len(ds.X_train) == 10 and len(ds.X_test) == 4 and ds.n_classes == 5
    np.testing.assert_array_equal(ds.y_test, y[:4])


def test_npz_regression_1d_and_2d_targets(tmp_path):
    X, _ = xy(n=10)
    ds = data.load_npz(npz_file(tmp_path, X=X, y=np.linspace(0, 1, 10)), task="regression")
    assert ds.n_classes is None and ds.y_train.shape == (8, 1) and ds.n_outputs == 1
    ds2 = data.load_npz(npz_file(tmp_path, "r.npz", X=X, y=np.ones((10, 2))), task="regression")
    assert ds2.y_test.shape == (2, 2)


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError) as exc:
        data.load_npz(str(tmp_path / "nope.npz"))
    assert "nope.npz" in one_line(exc) and "no such file" in str(exc.value)


def test_npz_not_a_valid_npz(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_text("hello")
    with pytest.raises(DataError) as exc:
        data.load_npz(str(path))
    assert "bad.npz" in one_line(exc) and "not a valid .npz" in str(exc.value)


def test_npz_single_npy_array_is_rejected(tmp_path):
    path = tmp_path / "arr.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError) as exc:
        data.load_npz(str(path))
    assert "not a valid .npz" in one_line(exc)


def test_npz_missing_array_lists_present(tmp_path):
    X, _ = xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, labels=np.zeros(20)))
    msg = one_line(exc)
    assert "'y'" in msg and "X, labels" in msg


def test_npz_x_test_without_y_test(tmp_path):
    X, y = xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, y=y, X_test=X))
    assert "'y_test'" in one_line(exc)


def test_npz_x_not_2d(tmp_path):
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=np.zeros(20), y=np.zeros(20, int)))
    assert "shape (20,)" in one_line(exc) and "2-D" in str(exc.value)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_npz_y_wrong_ndim(tmp_path, task):
    X, _ = xy()
    bad = np.zeros((20, 1)) if task == "classification" else np.zeros((20, 1, 1))
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, y=bad), task=task)
    assert f"shape {bad.shape}" in one_line(exc)


def test_npz_sample_count_mismatch(tmp_path):
    X, y = xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, y=y[:19]))
    assert "20 samples" in one_line(exc) and "19" in str(exc.value)


@pytest.mark.parametrize("which", ["X", "y"])
def test_npz_non_numeric_dtype(tmp_path, which):
    X, y = xy()
    arrays = {"X": X, "y": y}
    arrays[which] = arrays[which].astype(str)
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, **arrays))
    msg = one_line(exc)
    assert f"{which} has non-numeric dtype <U" in msg


def test_npz_object_array_is_non_numeric(tmp_path):
    _, y = xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=np.array([[1, "a"]] * 20, dtype=object), y=y))
    assert "X has non-numeric dtype object" in one_line(exc)


def test_npz_complex_is_not_real(tmp_path):
    X, y = xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X.astype(complex), y=y))
    assert "complex128" in one_line(exc)


def test_npz_nan_in_x_counts_and_locates(tmp_path):
    X, y = xy()
    X[3, 1] = np.nan
    X[7, 0] = np.inf
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, y=y))
    msg = one_line(exc)
    assert "X contains 2 NaN/inf" in msg and "(3, 1)" in msg


def test_npz_nan_in_regression_y(tmp_path):
    X, _ = xy()
    y = np.zeros(20)
    y[5] = np.nan
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, y=y), task="regression")
    assert "y contains 1 NaN/inf" in one_line(exc) and "index 5" in str(exc.value)


def test_npz_non_integer_label(tmp_path):
    X, y = xy()
    y = y.astype(float)
    y[4] = 1.5
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, y=y))
    assert "y[4] = 1.5" in one_line(exc) and "not an integer" in str(exc.value)


def test_npz_negative_label(tmp_path):
    X, y = xy()
    y[6] = -2
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, y=y))
    assert "y[6] = -2" in one_line(exc) and ">= 0" in str(exc.value)


def test_npz_label_not_below_n_classes(tmp_path):
    X, y = xy(classes=3)
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, y=y), n_classes=2)
    msg = one_line(exc)
    assert "y[2] = 2" in msg and "0..1" in msg and "n_classes=2" in msg


def test_npz_test_labels_checked_too(tmp_path):
    X, y = xy(classes=3)
    path = npz_file(tmp_path, X=X, y=y, X_test=X[:3], y_test=np.array([0, 1, 9]))
    with pytest.raises(DataError) as exc:
        data.load_npz(path, n_classes=3)
    assert "y_test[2] = 9" in one_line(exc)


def test_npz_single_class_needs_n_classes(tmp_path):
    X, _ = xy()
    path = npz_file(tmp_path, X=X, y=np.zeros(20, int))
    with pytest.raises(DataError) as exc:
        data.load_npz(path)
    assert "only label 0" in one_line(exc)
    assert data.load_npz(path, n_classes=2).n_classes == 2


def test_npz_too_few_samples(tmp_path):
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=np.zeros((1, 3)), y=np.zeros(1, int)), n_classes=2)
    assert "1 sample" in one_line(exc) and "at least 2" in str(exc.value)


@pytest.mark.parametrize("frac", [0, 1, -0.1, 1.5])
def test_npz_bad_test_fraction(tmp_path, frac):
    X, y = xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, y=y), test_fraction=frac)
    msg = one_line(exc)
    assert "d.npz" in msg and f"test_fraction={frac!r}" in msg and "(0, 1)" in msg


@pytest.mark.parametrize("big", [10**12, 1e12, 1e300, np.iinfo(np.uint64).max])
def test_npz_huge_label_is_bounded_by_the_number_of_samples(tmp_path, big):
    X, y = xy()
    y = y.astype(np.asarray(big).dtype)
    y[5] = big
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, y=y))
    msg = one_line(exc)
    assert msg.startswith(f"{tmp_path / 'd.npz'}: y[5] = ")
    assert "at most the number of samples (20)" in msg and "0..19" in msg


def test_npz_labels_up_to_the_number_of_samples_are_classes(tmp_path):
    """Given n_classes, labels up to it are classes; inferred from the labels, classes with no
    sample (a label 19 among 0..2) are refused, naming them and the way to ask for them."""
    X, y = xy()
    y[0] = 19  # 20 samples: at most 20 classes
    assert data.load_npz(npz_file(tmp_path, X=X, y=y), n_classes=20).n_classes == 20
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, y=y))
    msg = one_line(exc)
    assert "labels run 0..19" in msg and "have no sample" in msg and "--n-classes N" in msg


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_npz_value_beyond_float32_is_refused(tmp_path, task):
    X, y = xy()
    X[2, 1] = -1e300
    X[4, 0] = 1e300
    path = npz_file(tmp_path, X=X, y=y)
    with pytest.raises(DataError) as exc:
        data.load_npz(path, task=task)
    msg = one_line(exc)
    assert "X[2, 1] = -1e+300 does not fit in float32" in msg
    assert "3.403e+38" in msg and "2 value(s)" in msg and "train.dtype='float64'" in msg
    assert data.load_npz(path, dtype="float64", task=task).X_train.dtype == np.float64


def test_npz_regression_target_beyond_float32_is_refused(tmp_path):
    X, _ = xy()
    y = np.zeros(20)
    y[7] = 1e39
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=X, y=y), task="regression")
    assert "y[7] = 1e+39 does not fit in float32" in one_line(exc)


def test_npz_x_without_features(tmp_path):
    _, y = xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(npz_file(tmp_path, X=np.zeros((20, 0)), y=y))
    assert "X has shape (20, 0); expected at least 1 feature" in one_line(exc)


def test_npz_regression_without_samples(tmp_path):
    path = npz_file(tmp_path, X=np.zeros((0, 3)), y=np.zeros(0))
    with pytest.raises(DataError) as exc:
        data.load_npz(path, task="regression")
    assert "X has 0 sample(s); need at least 2" in one_line(exc)
