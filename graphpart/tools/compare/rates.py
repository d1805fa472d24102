"""This machine's rates for `plan --auto`: matmul FLOP/s of one device, memcpy, one hop."""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from graphpart.plan.auto import Rates
from graphpart.tools.compare.project import hop_seconds


def measure_rates(threads: int, dtype: str = "float32", seconds: float = 0.3) -> Rates:
    """Sustained matmul rate with `threads` BLAS threads (512x512, float32), copy bandwidth
    (16 MiB), and a 1 MiB shared-memory hop's time less its copy (its fixed latency)."""
    n = 512
    a = np.ones((n, n), dtype)
    with threadpool_limits(threads):
        a @ a
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ a
            count += 1
        flops = 2 * n**3 * count / (time.perf_counter() - t0)
    src = np.ones(4 * 2**20, np.float32)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(5))
    copy = src.nbytes / best
    hop = hop_seconds(2**20)
    return Rates(flops_per_s=flops, copy_bytes_per_s=copy, hop_s=max(0.0, hop - 2**20 / copy))


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t
