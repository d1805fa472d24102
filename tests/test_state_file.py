"""A stage's state file (workers/state_file.py).

Contract: `read(write(state))` gives back every parameter and optimizer array bit for bit, with
its dtype, shape and name, and the step count, for any number of optimizer slots (SGD's none,
momentum's one, Adam's two); the write is whole or nothing (no file and no temporary left when
it fails); and writing does not copy the arrays (traced allocations stay far under their size).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from workers import state_file


def _state(slots: int, dtype: str = "float64") -> dict:
    rng = np.random.default_rng(0)
    params = {"W1": rng.standard_normal((5, 3)).astype(dtype), "b1": np.zeros(5, dtype)}
    return {
        "params": params,
        "opt": {
            k: [rng.standard_normal(w.shape).astype(dtype) for _ in range(slots)]
            for k, w in params.items()
        },
        "steps": 7,
    }


@pytest.mark.parametrize("slots", [0, 1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_exact(tmp_path, slots, dtype):
    st = _state(slots, dtype)
    state_file.write(tmp_path / "s", st)
    got = state_file.read(tmp_path / "s")
    assert got["steps"] == 7
    assert list(got["params"]) == list(st["params"])
    for k, w in st["params"].items():
        assert got["params"][k].dtype == w.dtype and np.array_equal(got["params"][k], w)
        assert len(got["opt"][k]) == slots
        for a, b in zip(got["opt"][k], st["opt"][k], strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_a_failed_write_leaves_nothing(tmp_path):
    st = _state(1)
    st["params"]["bad"] = np.array([object()])  # not writable without pickle
    with pytest.raises(ValueError):
        state_file.write(tmp_path / "s", st)
    assert list(tmp_path.iterdir()) == []


def test_writing_does_not_copy_the_arrays(tmp_path):
    big = np.ones((1024, 1024))  # 8 MiB
    st = {"params": {"W": big}, "opt": {"W": [big, big]}, "steps": 1}
    tracemalloc.start()
    try:
        state_file.write(tmp_path / "s", st)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < big.nbytes // 8, f"writing 24 MiB of state allocated {peak} bytes"
    assert np.array_equal(state_file.read(tmp_path / "s")["opt"]["W"][1], big)
