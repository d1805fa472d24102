"""Atomic files and .npz archives of run directories (graphpart/run/checkpoint.py).

Contract: `write_npz` writes what `np.load` reads back bit for bit (names, dtypes, shapes,
0-d and empty arrays, non-contiguous inputs), straight from the arrays (traced allocations far
under their size); a write that fails leaves the earlier file as it was and no temporary
beside it.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from graphpart.run.checkpoint import atomic_file, write_npz


def test_write_npz_reads_back_with_np_load(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "param/W1": rng.standard_normal((5, 3)).astype(np.float32),
        "opt/W1/0": rng.standard_normal((5, 3)),
        "meta": np.frombuffer(b'{"format": 1}', dtype=np.uint8),
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 4)),
        "strided": rng.standard_normal((6, 6))[::2, 1:],
        "labels": np.arange(7, dtype=np.int64),
    }
    write_npz(tmp_path / "a.npz", arrays)
    with np.load(tmp_path / "a.npz") as z:
        assert sorted(z.files) == sorted(arrays)
        for k, a in arrays.items():
            assert z[k].dtype == a.dtype and z[k].shape == a.shape and np.array_equal(z[k], a)


def test_write_npz_does_not_copy_the_arrays(tmp_path):
    big = np.ones((1024, 1024))  # 8 MiB
    tracemalloc.start()
    try:
        write_npz(tmp_path / "b.npz", {"a": big, "b": big, "c": big})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < big.nbytes // 8, f"writing 24 MiB allocated {peak} bytes"


def test_a_failed_write_keeps_the_earlier_file(tmp_path):
    path = tmp_path / "c.npz"
    write_npz(path, {"a": np.arange(3)})
    with pytest.raises(ValueError):
        write_npz(path, {"a": np.arange(4), "bad": np.array([object()])})
    with np.load(path) as z:
        assert z.files == ["a"] and np.array_equal(z["a"], np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_atomic_file_names_the_path_when_the_os_refuses(tmp_path):
    with pytest.raises(OSError, match="cannot write .*missing"):
        with atomic_file(tmp_path / "missing" / "x") as f:
            f.write(b"x")
