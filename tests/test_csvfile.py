"""The .csv reader (graphpart.run.csvfile).

Contract: a .csv (features, then the label last; a header row detected and skipped; quotes,
comments, blank lines and a BOM allowed) loads to the same Dataset as a .npz of the same
arrays, its task taken from the labels when none is given; a malformed one raises a one-line
DataError naming the file, the line and column, or the value.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import npz_file, one_line, xy

from graphpart.errors import DataError
from graphpart.run import data


def _csv(tmp_path, text: str, name: str = "d.csv") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return str(path)


def test_csv_equals_the_same_npz(tmp_path):
    X, y = xy(n=40, d=3, classes=4)
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",", fmt="%.17g")
    a = data.load(str(tmp_path / "d.csv"), test_fraction=0.25, seed=3)
    b = data.load(npz_file(tmp_path, X=X, y=y), test_fraction=0.25, seed=3)
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
    msg = one_line(exc)
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
