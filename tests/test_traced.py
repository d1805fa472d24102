"""NumPy's allocations through tracemalloc (workers/traced.py).

Contract: `read` is None when nothing is tracing; after `start`, it counts the NumPy arrays
alive (their data, to the byte) and not those freed, nor the Python objects beside them, with
the peak and the tracer's own bytes.
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from workers import traced


def test_nothing_traced_reads_none():
    assert not tracemalloc.is_tracing()
    assert traced.read() is None


def test_counts_the_arrays_alive():
    traced.start()
    try:
        base = traced.read()
        kept = np.ones(1 << 18)  # 2 MiB
        gone = np.ones(1 << 17)
        junk = [object() for _ in range(10_000)]  # Python objects: not arrays
        del gone
        got = traced.read()
    finally:
        tracemalloc.stop()
    assert got.arrays - base.arrays == kept.nbytes
    assert got.peak >= base.arrays + kept.nbytes + (1 << 20)  # the freed array was at the peak
    assert got.overhead > 0 and len(junk) == 10_000
