"""What one training step costs: its matmul FLOPs, the BLAS matmul peak, its own matmuls alone."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

from graphpart.tools.machine import time_calls


def step_flops(sizes: Sequence[int], batch: int) -> int:
    """Matmul FLOPs of one training step: forward 2*B*sum(n_in*n_out), backward dW for every
    layer plus dx for every layer but the first (the data needs no gradient)."""
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    fwd = 2 * batch * sum(a * b for a, b in pairs)
    return 3 * fwd - 2 * batch * sizes[0] * sizes[1]


def matmul_gflops(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of an n x n @ n x n product through NumPy's BLAS (best and median of `repeats`)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype)
    # one warm-up call: threads started, pages touched
    times = time_calls(lambda _: np.matmul(a, b, out=out), max(1, repeats), warmup=1)
    flop = 2.0 * n**3
    return {
        "n": n,
        "gflops": flop / min(times) / 1e9,
        "gflops_median": flop / statistics.median(times) / 1e9,
    }


def step_matmul_times(
    sizes: Sequence[int], batch: int, dtype: str = "float32", repeats: int = 30
) -> dict[str, float]:
    """Time only the step's own matrix products (NumPy, `out=`, the executor's transposes).

    This is what the step would cost if everything but the matmuls were free, at the shapes
    the step really multiplies (small, skinny products reach less than the square peak).
    """
    rng = np.random.default_rng(1)
    dt = np.dtype(dtype)
    n = len(sizes) - 1
    ws = [rng.standard_normal((sizes[i + 1], sizes[i])).astype(dt) for i in range(n)]
    hs = [rng.standard_normal((batch, s)).astype(dt) for s in sizes]
    dzs = [np.empty((batch, s), dt) for s in sizes]
    dws = [np.empty_like(w) for w in ws]

    def once(_: int) -> None:
        for i in range(n):  # forward: z = h W^T
            np.matmul(hs[i], ws[i].T, out=dzs[i + 1])
        for i in reversed(range(n)):  # backward: dW = dz^T h, dh = dz W
            np.matmul(hs[i + 1].T, hs[i], out=dws[i])
            if i > 0:
                np.matmul(hs[i + 1], ws[i], out=dzs[i])

    times = time_calls(once, max(1, repeats), warmup=1)
    return {"best_ms": 1e3 * min(times), "median_ms": 1e3 * statistics.median(times)}
