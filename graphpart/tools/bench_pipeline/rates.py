"""The machine's one-thread sgemm rate at the products a stage runs, and what its matmuls cost.

The rate is the best BLAS at hand at each shape (OpenBLAS, and MKL where it is installed):
the machine's limit, whichever BLAS graphpart itself picked. Each product is timed twice:
"hot", the same operands call after call (they stay in the core's cache: the BLAS's best
case), and "cold", taking turns over copies of the operands that together outgrow the
core's L2 cache, as a stage's products meet theirs: between a micro-batch's forward and its
backward the stage touches its other layers, gradients and optimizer state, so a layer's
weights come back from the shared cache or memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from graphpart.engines import blas_providers, host_array

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
    fwd_cold_ms: float = 0.0  # the same at the rate with operands that are not in cache
    bwd_cold_ms: float = 0.0

    @property
    def gflops(self) -> float:
        """The rate these products run at, all together (GFLOP/s)."""
        return (self.fwd_gflop + self.bwd_gflop) / (self.fwd_ms + self.bwd_ms) * 1e3

    @property
    def cold_gflops(self) -> float:
        """The same with operands that are not in the core's cache (GFLOP/s)."""
        return (self.fwd_gflop + self.bwd_gflop) / (self.fwd_cold_ms + self.bwd_cold_ms) * 1e3


COLD_BYTES = 64 << 20  # operand copies taken in turn: past any core's L2 (4 MiB here)


def product_rate(
    kind: str, rows: int, n_in: int, n_out: int, dtype: str, repeats: int, cold: bool = False
) -> float:
    """GFLOP/s of one product on one BLAS thread, with the best BLAS at hand: per BLAS the
    median of `repeats` calls after two, the BLAS taking turns call by call. `cold`: each
    call takes the next of enough copies of the operands to fill COLD_BYTES (4 to 64), so
    none of a sizeable product's is in the core's cache when its turn comes."""
    sa, sb, sc, gemm_kind = PRODUCTS[kind](rows, n_in, n_out)
    rng = np.random.default_rng(0)
    itemsize = np.dtype(dtype).itemsize
    one = (np.prod(sa) + np.prod(sb) + np.prod(sc)) * itemsize
    copies = min(64, max(4, int(COLD_BYTES // max(one, 1)))) if cold else 1
    ops = [tuple(host_array(s, dtype, zero=True) for s in (sa, sb, sc)) for _ in range(copies)]
    for a, b, _ in ops:  # on 64-byte boundaries, as a stage's buffers: the BLAS's best layout
        a[:] = rng.standard_normal(sa)
        b[:] = rng.standard_normal(sb)
    gemms = blas_providers()
    times: dict[str, list[float]] = {name: [] for name in gemms}
    with threadpool_limits(1):
        for i in range(repeats + 2):
            for j, (name, gemm) in enumerate(gemms.items()):
                a, b, c = ops[(i * len(gemms) + j) % copies]
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
    now at exactly those shapes (the first layer of the model computes no input gradient),
    with hot and with cold operands."""
    out, first = [], 0
    for k, n in enumerate(split):
        fwd_f = bwd_f = 0.0
        cost = {(d, c): 0.0 for d in ("fwd", "bwd") for c in (False, True)}
        for layer in range(first, first + n):
            i, o = sizes[layer], sizes[layer + 1]
            flop = 2.0 * rows * i * o / 1e9
            fwd_f += flop
            kinds = ("fwd", "dW", "dx") if layer > 0 else ("fwd", "dW")
            bwd_f += flop * (len(kinds) - 1)
            for kind in kinds:
                for cold in (False, True):
                    rate = product_rate(kind, rows, i, o, dtype, repeats, cold)
                    cost["fwd" if kind == "fwd" else "bwd", cold] += flop / rate * 1e3
        out.append(
            StageMatmuls(
                k,
                rows,
                fwd_f,
                bwd_f,
                cost["fwd", False],
                cost["bwd", False],
                cost["fwd", True],
                cost["bwd", True],
            )  # fmt: skip
        )
        first += n
    return out


def as_dicts(ms: Sequence[StageMatmuls]) -> list[dict[str, Any]]:
    return [{**asdict(m), "gflops": m.gflops, "cold_gflops": m.cold_gflops} for m in ms]
