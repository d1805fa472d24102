"""Contract of graphpart.run.data.

Loaders return a Dataset with the documented shapes and dtypes; the train/test split and the
batch order are fixed by the seed (and epoch); synthetic data does not depend on chunking; every
malformed .npz raises a one-line DataError naming the file and the offending value, and
batch_size < 1 raises ConfigError. A .csv (features, then the label last; a header row
detected and skipped) loads to the same Dataset as a .npz of the same arrays, its task taken
from the labels when none is given, and a malformed one raises a one-line DataError naming the
file, the line and column, or the value; read_samples reads a whole file against a model's
feature count (naming both numbers when they differ).
"""

from __future__ import annotations

import numpy as np
import pytest

from graphpart.errors import ConfigError, DataError
from graphpart.run import data


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _npz(tmp_path, name="d.npz", **arrays) -> str:
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path


def _xy(n=20, d=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), np.arange(n) % classes


# --- digits -------------------------------------------------------------------------------


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


def test_split_indices_partition_and_stratify():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train, test = data.split_indices(100, 0.3, seed=1, labels=labels)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    assert len(test) == 30
    assert list(np.bincount(labels[test])) == [15, 9, 6]
    t2 = data.split_indices(100, 0.3, seed=1, labels=labels)[1]
    np.testing.assert_array_equal(test, t2)


# --- synthetic ----------------------------------------------------------------------------


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
    monkeypatch.setattr(data, "_CHUNK_ROWS", 7)
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


# --- npz ----------------------------------------------------------------------------------


def test_npz_classification_infers_classes_and_splits(tmp_path):
    X, y = _xy(n=40, classes=4)
    ds = data.load_npz(_npz(tmp_path, X=X, y=y), test_fraction=0.25)
    assert ds.n_classes == 4 and ds.name == "d"
    assert (len(ds.X_train), len(ds.X_test)) == (30, 10)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert sorted(np.bincount(ds.y_test)) == [2, 2, 3, 3]  # stratified: 2.5 per class


def test_npz_explicit_test_set_and_float_integer_labels(tmp_path):
    X, y = _xy(n=10)
    path = _npz(tmp_path, X=X, y=y.astype(float), X_test=X[:4], y_test=y[:4])
    ds = data.load_npz(path, n_classes=5)
    assert len(ds.X_train) == 10 and len(ds.X_test) == 4 and ds.n_classes == 5
    np.testing.assert_array_equal(ds.y_test, y[:4])


def test_npz_regression_1d_and_2d_targets(tmp_path):
    X, _ = _xy(n=10)
    ds = data.load_npz(_npz(tmp_path, X=X, y=np.linspace(0, 1, 10)), task="regression")
    assert ds.n_classes is None and ds.y_train.shape == (8, 1) and ds.n_outputs == 1
    ds2 = data.load_npz(_npz(tmp_path, "r.npz", X=X, y=np.ones((10, 2))), task="regression")
    assert ds2.y_test.shape == (2, 2)


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError) as exc:
        data.load_npz(str(tmp_path / "nope.npz"))
    assert "nope.npz" in _one_line(exc) and "no such file" in str(exc.value)


def test_npz_not_a_valid_npz(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_text("hello")
    with pytest.raises(DataError) as exc:
        data.load_npz(str(path))
    assert "bad.npz" in _one_line(exc) and "not a valid .npz" in str(exc.value)


def test_npz_single_npy_array_is_rejected(tmp_path):
    path = tmp_path / "arr.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError) as exc:
        data.load_npz(str(path))
    assert "not a valid .npz" in _one_line(exc)


def test_npz_missing_array_lists_present(tmp_path):
    X, _ = _xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, labels=np.zeros(20)))
    msg = _one_line(exc)
    assert "'y'" in msg and "X, labels" in msg


def test_npz_x_test_without_y_test(tmp_path):
    X, y = _xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, y=y, X_test=X))
    assert "'y_test'" in _one_line(exc)


def test_npz_x_not_2d(tmp_path):
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=np.zeros(20), y=np.zeros(20, int)))
    assert "shape (20,)" in _one_line(exc) and "2-D" in str(exc.value)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_npz_y_wrong_ndim(tmp_path, task):
    X, _ = _xy()
    bad = np.zeros((20, 1)) if task == "classification" else np.zeros((20, 1, 1))
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, y=bad), task=task)
    assert f"shape {bad.shape}" in _one_line(exc)


def test_npz_sample_count_mismatch(tmp_path):
    X, y = _xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, y=y[:19]))
    assert "20 samples" in _one_line(exc) and "19" in str(exc.value)


@pytest.mark.parametrize("which", ["X", "y"])
def test_npz_non_numeric_dtype(tmp_path, which):
    X, y = _xy()
    arrays = {"X": X, "y": y}
    arrays[which] = arrays[which].astype(str)
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, **arrays))
    msg = _one_line(exc)
    assert f"{which} has non-numeric dtype <U" in msg


def test_npz_object_array_is_non_numeric(tmp_path):
    _, y = _xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=np.array([[1, "a"]] * 20, dtype=object), y=y))
    assert "X has non-numeric dtype object" in _one_line(exc)


def test_npz_complex_is_not_real(tmp_path):
    X, y = _xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X.astype(complex), y=y))
    assert "complex128" in _one_line(exc)


def test_npz_nan_in_x_counts_and_locates(tmp_path):
    X, y = _xy()
    X[3, 1] = np.nan
    X[7, 0] = np.inf
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, y=y))
    msg = _one_line(exc)
    assert "X contains 2 NaN/inf" in msg and "(3, 1)" in msg


def test_npz_nan_in_regression_y(tmp_path):
    X, _ = _xy()
    y = np.zeros(20)
    y[5] = np.nan
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, y=y), task="regression")
    assert "y contains 1 NaN/inf" in _one_line(exc) and "index 5" in str(exc.value)


def test_npz_non_integer_label(tmp_path):
    X, y = _xy()
    y = y.astype(float)
    y[4] = 1.5
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, y=y))
    assert "y[4] = 1.5" in _one_line(exc) and "not an integer" in str(exc.value)


def test_npz_negative_label(tmp_path):
    X, y = _xy()
    y[6] = -2
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, y=y))
    assert "y[6] = -2" in _one_line(exc) and ">= 0" in str(exc.value)


def test_npz_label_not_below_n_classes(tmp_path):
    X, y = _xy(classes=3)
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, y=y), n_classes=2)
    msg = _one_line(exc)
    assert "y[2] = 2" in msg and "0..1" in msg and "n_classes=2" in msg


def test_npz_test_labels_checked_too(tmp_path):
    X, y = _xy(classes=3)
    path = _npz(tmp_path, X=X, y=y, X_test=X[:3], y_test=np.array([0, 1, 9]))
    with pytest.raises(DataError) as exc:
        data.load_npz(path, n_classes=3)
    assert "y_test[2] = 9" in _one_line(exc)


def test_npz_single_class_needs_n_classes(tmp_path):
    X, _ = _xy()
    path = _npz(tmp_path, X=X, y=np.zeros(20, int))
    with pytest.raises(DataError) as exc:
        data.load_npz(path)
    assert "only label 0" in _one_line(exc)
    assert data.load_npz(path, n_classes=2).n_classes == 2


def test_npz_too_few_samples(tmp_path):
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=np.zeros((1, 3)), y=np.zeros(1, int)), n_classes=2)
    assert "1 sample" in _one_line(exc) and "at least 2" in str(exc.value)


@pytest.mark.parametrize("frac", [0, 1, -0.1, 1.5])
def test_npz_bad_test_fraction(tmp_path, frac):
    X, y = _xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, y=y), test_fraction=frac)
    msg = _one_line(exc)
    assert "d.npz" in msg and f"test_fraction={frac!r}" in msg and "(0, 1)" in msg


# --- batches ------------------------------------------------------------------------------


def test_batches_cover_every_index_once():
    out = list(data.batches(103, 10, seed=0, epoch=0))
    assert [len(b) for b in out] == [10] * 10 + [3]
    assert np.array_equal(np.sort(np.concatenate(out)), np.arange(103))


def test_batches_drop_last():
    out = list(data.batches(103, 10, seed=0, epoch=0, drop_last=True))
    assert [len(b) for b in out] == [10] * 10
    assert len(np.unique(np.concatenate(out))) == 100


def test_batches_reproducible_per_epoch():
    a = np.concatenate(list(data.batches(50, 8, seed=1, epoch=2)))
    b = np.concatenate(list(data.batches(50, 8, seed=1, epoch=2)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, np.concatenate(list(data.batches(50, 8, seed=1, epoch=3))))
    assert not np.array_equal(a, np.concatenate(list(data.batches(50, 8, seed=2, epoch=2))))


@pytest.mark.parametrize("bs", [0, -1])
def test_batches_bad_batch_size_raises_eagerly(bs):
    with pytest.raises(ConfigError) as exc:
        data.batches(10, bs, seed=0, epoch=0)  # no iteration needed
    assert f"batch_size={bs}" in _one_line(exc)


# --- load ---------------------------------------------------------------------------------


def test_load_dispatches_and_ignores_foreign_options(tmp_path):
    assert data.load("digits", n_samples=5, seed=1).name == "digits"
    syn = data.load("synthetic", n_samples=50, n_features=4, test_fraction=0.2)
    assert syn.n_features == 4 and len(syn.X_test) == 10
    X, y = _xy()
    assert data.load(_npz(tmp_path, X=X, y=y), n_samples=5).n_classes == 3


def test_load_unknown_source_lists_choices():
    with pytest.raises(DataError) as exc:
        data.load("mnist")
    msg = _one_line(exc)
    assert "'mnist'" in msg and "digits" in msg and "synthetic" in msg and ".npz" in msg


# --- values that cannot become a model: huge labels, values beyond the dtype, no features ----


@pytest.mark.parametrize("big", [10**12, 1e12, 1e300, np.iinfo(np.uint64).max])
def test_npz_huge_label_is_bounded_by_the_number_of_samples(tmp_path, big):
    X, y = _xy()
    y = y.astype(np.asarray(big).dtype)
    y[5] = big
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, y=y))
    msg = _one_line(exc)
    assert msg.startswith(f"{tmp_path / 'd.npz'}: y[5] = ")
    assert "at most the number of samples (20)" in msg and "0..19" in msg


def test_npz_labels_up_to_the_number_of_samples_are_classes(tmp_path):
    """Given n_classes, labels up to it are classes; inferred from the labels, classes with no
    sample (a label 19 among 0..2) are refused, naming them and the way to ask for them."""
    X, y = _xy()
    y[0] = 19  # 20 samples: at most 20 classes
    assert data.load_npz(_npz(tmp_path, X=X, y=y), n_classes=20).n_classes == 20
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, y=y))
    msg = _one_line(exc)
    assert "labels run 0..19" in msg and "have no sample" in msg and "--n-classes N" in msg


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_npz_value_beyond_float32_is_refused(tmp_path, task):
    X, y = _xy()
    X[2, 1] = -1e300
    X[4, 0] = 1e300
    path = _npz(tmp_path, X=X, y=y)
    with pytest.raises(DataError) as exc:
        data.load_npz(path, task=task)
    msg = _one_line(exc)
    assert "X[2, 1] = -1e+300 does not fit in float32" in msg
    assert "3.403e+38" in msg and "2 value(s)" in msg and "train.dtype='float64'" in msg
    assert data.load_npz(path, dtype="float64", task=task).X_train.dtype == np.float64


def test_npz_regression_target_beyond_float32_is_refused(tmp_path):
    X, _ = _xy()
    y = np.zeros(20)
    y[7] = 1e39
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=X, y=y), task="regression")
    assert "y[7] = 1e+39 does not fit in float32" in _one_line(exc)


def test_npz_x_without_features(tmp_path):
    _, y = _xy()
    with pytest.raises(DataError) as exc:
        data.load_npz(_npz(tmp_path, X=np.zeros((20, 0)), y=y))
    assert "X has shape (20, 0); expected at least 1 feature" in _one_line(exc)


def test_npz_regression_without_samples(tmp_path):
    path = _npz(tmp_path, X=np.zeros((0, 3)), y=np.zeros(0))
    with pytest.raises(DataError) as exc:
        data.load_npz(path, task="regression")
    assert "X has 0 sample(s); need at least 2" in _one_line(exc)


# --- .csv files: the label last, a header detected ------------------------------------------


def _csv(tmp_path, text: str, name: str = "d.csv") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return str(path)


def test_csv_equals_the_same_npz(tmp_path):
    X, y = _xy(n=40, d=3, classes=4)
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",", fmt="%.17g")
    a = data.load(str(tmp_path / "d.csv"), test_fraction=0.25, seed=3)
    b = data.load(_npz(tmp_path, X=X, y=y), test_fraction=0.25, seed=3)
    assert a.name == b.name == "d" and a.n_classes == b.n_classes == 4
    for k in ("X_train", "y_train", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
        assert getattr(a, k).dtype == getattr(b, k).dtype


def test_csv_header_quotes_comments_blank_lines_and_bom(tmp_path):
    text = '\ufeff# a comment\n"x1", "x 2",label\n\n1,2,0\n"3", 4 ,1\n# another\n5,6,1\n7,8,0\n'
    ds = data.load_csv(_csv(tmp_path, text), test_fraction=0.5)
    X = np.vstack([ds.X_train, ds.X_test])
    assert sorted(X[:, 0].tolist()) == [1, 3, 5, 7] and ds.n_classes == 2
    no_header = data.read_csv(_csv(tmp_path, "1,2,0\n3,4,1\n", "n.csv"))
    np.testing.assert_array_equal(no_header, [[1, 2, 0], [3, 4, 1]])
    assert data.read_csv(_csv(tmp_path, "a,b\n1,2\n", "one.csv")).shape == (1, 2)


def test_csv_task_from_the_labels(tmp_path):
    ints = _csv(tmp_path, "".join(f"{i},{i % 3}.0\n" for i in range(12)), "i.csv")
    assert data.load(ints).n_classes == 3
    floats = _csv(tmp_path, "".join(f"{i},{i / 7}\n" for i in range(12)), "f.csv")
    ds = data.load(floats)
    assert ds.n_classes is None and ds.y_train.shape == (10, 1) and ds.y_train.dtype == np.float32
    assert data.load_csv(ints, task="regression").n_classes is None
    assert data.load_csv(ints, n_classes=5, task="classification").n_classes == 5
    assert data.load(_csv(tmp_path, "1,0\n2,1\n", "UPPER.CSV")).n_classes == 2


@pytest.mark.parametrize(
    "text, needle",
    [
        ("a,b,y\n1,2,0\n3,x,1\n", "line 3, column 2: 'x' is not a number"),
        ("1,2,0\n3,4\n", "line 2 has 2 columns but line 1 has 3"),
        ("1,,0\n", "line 1, column 2: an empty field (missing values are not supported)"),
        ("a;b;y\n1;2;0\n", "(fields are separated by commas)"),
        ("a,b,y\n", "no data rows"),
        ("", "no data rows"),
        ("1\n2\n", "has 1 column; expected at least 2"),
        ("1,nan,0\n2,3,1\n", "X contains 1 NaN/inf value(s); first at index (0, 1)"),
        ("1,0\n2,-1\n3,1\n", "y[1] = -1 is out of range"),
        ("1,1e300\n2,0\n", "does not fit in float32"),
    ],
)
def test_bad_csv_is_one_line_naming_file_line_and_value(tmp_path, text, needle):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError) as exc:
        data.load(path, task="classification" if "1e300" not in text else "regression")
    msg = _one_line(exc)
    assert msg.startswith(path) and needle in msg, msg


def test_csv_not_text_or_missing(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(DataError, match="not a valid CSV file \\(not UTF-8 text\\)"):
        data.load(str(path))
    with pytest.raises(DataError, match="nope.csv: no such file"):
        data.load(str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="is a folder"):
        data.read_csv(str(tmp_path))


def test_read_samples_reads_every_row_against_a_model(tmp_path):
    X, y = _xy(n=10, d=3)
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
