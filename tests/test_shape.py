"""A data source's shape (graphpart.run.data.shape_of, each reader's `shape`), read without
loading it, and `plan`/`graph`, which read nothing more.

Contract: for every source (digits, synthetic, a .npz with or without a test set, compressed or
not, a .csv with or without a header, classification or regression) `shape_of` gives the
features, outputs, classes, split sizes and dtype that loading the data gives; a file with
anything odd in it (a missing array, a label out of range or not whole, a malformed line) gets
the loader's own error, word for word; `setup`, `graphpart plan` and `graphpart graph` never load
the data: on a 5M-row synthetic config, on a .npz whose X is 1.28 GB (only its header is there
to read) and on a .csv, they finish with the loaders made to fail, using a few MiB of memory;
the data loads when a run first asks for it.
"""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from graphpart.cli import main
from graphpart.errors import DataError
from graphpart.run import csvfile, digits, npzfile
from graphpart.run import data as gdata
from graphpart.run import synthetic as synthetic_source
from graphpart.run.config import load_config
from graphpart.run.data import DataShape, shape_of
from graphpart.run.setup import data_shape, load_dataset, setup

RNG = np.random.default_rng(7)
# every way to load data: each reader's load, and what those call
LOADERS = (
    (gdata, "load"),
    (digits, "load"),
    (digits, "load_digits"),
    (synthetic_source, "load"),
    (synthetic_source, "synthetic"),
    (npzfile, "load"),
    (npzfile, "read_npz"),
    (csvfile, "load"),
    (csvfile, "read_csv"),
)


def _fail(*a, **k):
    raise AssertionError("the data was loaded")


def _npz(path: Path, compressed: bool = False, **arrays) -> str:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return str(path)


def _csv(path: Path, A: np.ndarray, header: str = "") -> str:
    np.savetxt(path, A, delimiter=",", header=header, comments="")
    return str(path)


def _sources(tmp: Path) -> list[tuple[str, str]]:
    X, Xt = RNG.random((120, 7)), RNG.random((30, 7))
    labels = RNG.integers(0, 4, 120)
    test = {"X_test": Xt, "y_test": RNG.integers(0, 6, 30)}
    targets = {"y": RNG.random((120, 3)), "X_test": Xt, "y_test": RNG.random((30, 3))}
    ce = "cross_entropy"
    return [
        ("digits", ce),
        ("synthetic", ce),
        ("synthetic", "mse"),
        (_npz(tmp / "a.npz", X=X, y=labels), ce),
        (_npz(tmp / "b.npz", True, X=X, y=labels.astype(np.float32)), ce),
        (_npz(tmp / "c.npz", X=X, y=labels, **test), ce),
        (_npz(tmp / "d.npz", X=X, y=RNG.random(120)), "mse"),
        (_npz(tmp / "e.npz", True, X=X, **targets), "mse"),
        (_csv(tmp / "f.csv", np.c_[X, labels], header="a,b,c,d,e,f,g,label"), ce),
        (_csv(tmp / "g.csv", np.c_[X, RNG.random(120)]), "mse"),
    ]


def _cfg(source: str, loss: str, **over):
    return load_config(None, {"data.source": source, "model.loss": loss, **over})


def test_the_shape_is_the_loaded_data_sets(tmp_path, monkeypatch):
    for source, loss in _sources(tmp_path):
        for dtype in ("float32", "float64"):
            cfg = _cfg(source, loss, **{"train.dtype": dtype, "data.n_samples": 500})
            with monkeypatch.context() as m:  # read without a loader
                for module, name in LOADERS:
                    m.setattr(module, name, _fail)
                shape = data_shape(cfg)
            assert shape == DataShape.of(load_dataset(cfg)), (source, loss, dtype)


def test_shape_keywords_are_the_loaders(tmp_path):
    path = _npz(tmp_path / "x.npz", X=RNG.random((50, 3)), y=RNG.integers(0, 3, 50))
    assert shape_of(path, n_classes=5) == DataShape.of(gdata.load(path, n_classes=5))
    assert shape_of(path, task="regression").n_classes is None
    sh = shape_of("synthetic", n_samples=40, n_features=3, n_classes=2, test_fraction=0.25)
    assert (sh.n_train, sh.n_test, sh.n_features, sh.n_outputs) == (30, 10, 3, 2)
    assert sh.n_samples == 40 and sh.task == "classification"


def _odd_files(tmp: Path) -> list[str]:
    X = RNG.random((20, 3))
    return [
        _npz(tmp / "no_y.npz", X=X, z=np.zeros(20)),
        _npz(tmp / "negative.npz", X=X, y=np.r_[np.zeros(19), -1]),
        _npz(tmp / "half.npz", X=X, y=np.r_[np.zeros(19), 0.5]),
        _npz(tmp / "one_class.npz", X=X, y=np.zeros(20, np.int64)),
        _npz(tmp / "huge_label.npz", X=X, y=np.r_[np.zeros(19), 10**12]),
        _npz(tmp / "counts.npz", X=X, y=np.zeros(19, np.int64)),
        _npz(tmp / "flat.npz", X=np.zeros(20), y=np.zeros(20, np.int64)),
        _npz(tmp / "objects.npz", X=np.array([[None]] * 20, dtype=object), y=np.zeros(20)),
        str(tmp / "missing.npz"),
        _csv(tmp / "nan.csv", np.c_[X, np.r_[np.zeros(19), np.nan]]),
        str(tmp / "ragged.csv"),
        str(tmp / "empty.csv"),
    ]


def test_an_odd_file_gets_the_loaders_own_error(tmp_path):
    (tmp_path / "ragged.csv").write_text("1,2,0\n3,4,1\n5,6\n")
    (tmp_path / "empty.csv").write_text("# nothing\n")
    for path in _odd_files(tmp_path):
        with pytest.raises(DataError) as want:
            gdata.load(path, task="classification")
        with pytest.raises(DataError) as got:
            shape_of(path, task="classification")
        assert str(got.value) == str(want.value), path


@pytest.fixture
def no_loading(monkeypatch):
    """Every loader fails: what passes read only the shape."""
    for module, name in LOADERS:
        monkeypatch.setattr(module, name, _fail)


def _big_npz(path: Path, rows: int, features: int) -> str:
    """A .npz whose X.npy is only a header claiming (rows, features) float32 (its data is not
    there: reading it would fail), and a real y of int8 labels 0..9."""
    head = io.BytesIO()
    hdr = {"descr": "<f4", "fortran_order": False, "shape": (rows, features)}
    np.lib.format.write_array_header_1_0(head, hdr)
    y = io.BytesIO()
    np.save(y, (np.arange(rows) % 10).astype(np.int8))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("X.npy", head.getvalue())
        z.writestr("y.npy", y.getvalue())
    return str(path)


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_plan_and_graph_read_only_the_shape(tmp_path, no_loading, capsys):
    big = _big_npz(tmp_path / "big.npz", 5_000_000, 64)
    small = _csv(tmp_path / "s.csv", np.c_[RNG.random((1000, 64)), RNG.integers(0, 10, 1000)])
    for args in (
        ["--data", "synthetic", "--n-samples", "5000000", "--n-features", "64"],
        ["--data", big],
        ["--data", small],
    ):
        tracemalloc.start()
        try:
            assert main(["plan", "--stages", "2", "--hidden", "32,32", "--json", *args]) == 0
            assert main(["graph", "--stages", "2", "--hidden", "32,32", *args]) == 0
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 * 2**20, peak  # the features alone are 1.28 GB
        out = capsys.readouterr().out
        assert '"strategy"' in out and "digraph" in out
    s = setup(_cfg(big, "cross_entropy", **{"pipeline.stages": 2}))
    assert (s.shape.n_features, s.shape.n_outputs, s.shape.n_samples) == (64, 10, 5_000_000)
    assert s.graph.params[0].shape[0] == 64


def test_a_run_loads_the_data_when_it_first_asks(tmp_path, monkeypatch):
    calls = []
    real = npzfile.load

    def counting(spec):
        calls.append(spec.source)
        return real(spec)

    monkeypatch.setattr(npzfile, "load", counting)
    path = _npz(tmp_path / "a.npz", X=RNG.random((40, 3)), y=RNG.integers(0, 3, 40))
    s = setup(_cfg(path, "cross_entropy"))
    assert calls == []
    assert len(s.dataset.X_train) == s.shape.n_train and calls == [path]
    assert s.dataset is s.dataset and len(calls) == 1
