"""The machine's one-thread sgemm rate at the products a stage runs, and what its matmuls cost.

The rate is the best BLAS at hand at each shape (OpenBLAS, and MKL where it is installed):
the machine's limit, whichever BLAS graphpart itself picked."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from graphpart.engines import blas_providers

# the three products of a layer y = x W^T (W: out x in), as the CPU backend calls them:
# (a's shape, b's shape, out's shape, the gemm kind)
PRODUCTS = {
    "fwd": lambda rows, i, o: ((rows, i), (o, i), (rows, o), "nt"),
    "dW": lambda rows, i, o: ((rows, o), (rows, i), (o, i), "tn"),
    "dx": lambda rows, i, o: ((rows, o), (o, i), (rows, i), "nn"),
}


@dataclass(frozen=True)
class StageMatmuls:
    """One stage's matmuls for one micro-batch of `rows` rows, priced at the measured rates."""

    stage: int
    rows: int
    fwd_gflop: float
    bwd_gflop: float
    fwd_ms: float  # what the forward products cost at this machine's one-thread rate
    bwd_ms: float

    @property
    def gflops(self) -> float:
        """The rate these products run at, all together (GFLOP/s)."""
        return (self.fwd_gflop + self.bwd_gflop) / (self.fwd_ms + self.bwd_ms) * 1e3


def product_rate(kind: str, rows: int, n_in: int, n_out: int, dtype: str, repeats: int) -> float:
    """GFLOP/s of one product on one BLAS thread, with the best BLAS at hand: per BLAS the
    median of `repeats` calls after two, the BLAS taking turns call by call."""
    sa, sb, sc, gemm_kind = PRODUCTS[kind](rows, n_in, n_out)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(s).astype(dtype) for s in (sa, sb))
    c = np.empty(sc, dtype)
    gemms = blas_providers()
    times: dict[str, list[float]] = {name: [] for name in gemms}
    with threadpool_limits(1):
        for i in range(repeats + 2):
            for name, gemm in gemms.items():
                t = time.perf_counter()
                gemm(gemm_kind, a, b, c, 0.0)
                if i >= 2:
                    times[name].append(time.perf_counter() - t)
    best = min(statistics.median(ts) for ts in times.values())
    return 2.0 * rows * n_in * n_out / best / 1e9


def stage_matmuls(
    sizes: Sequence[int], split: Sequence[int], rows: int, dtype: str = "float32", repeats: int = 15
) -> list[StageMatmuls]:
    """Each stage's matmul FLOPs per micro-batch and their cost at the one-thread rate measured
    now at exactly those shapes (the first layer of the model computes no input gradient)."""
    out, first = [], 0
    for k, n in enumerate(split):
        fwd_f = bwd_f = fwd_s = bwd_s = 0.0
        for layer in range(first, first + n):
            i, o = sizes[layer], sizes[layer + 1]
            flop = 2.0 * rows * i * o / 1e9
            fwd_f += flop
            fwd_s += flop / product_rate("fwd", rows, i, o, dtype, repeats)
            kinds = ("dW", "dx") if layer > 0 else ("dW",)
            for kind in kinds:
                bwd_f += flop
                bwd_s += flop / product_rate(kind, rows, i, o, dtype, repeats)
        out.append(StageMatmuls(k, rows, fwd_f, bwd_f, fwd_s * 1e3, bwd_s * 1e3))
        first += n
    return out


def as_dicts(ms: Sequence[StageMatmuls]) -> list[dict[str, Any]]:
    return [{**asdict(m), "gflops": m.gflops} for m in ms]
