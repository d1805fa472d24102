"""What one HVP costs against one gradient: measured time, matmul FLOPs, memory kept."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from graphpart.autodiff import value_and_grad
from graphpart.hvp import kept_bytes, value_grad_hvp
from graphpart.ir.graph import Graph


@dataclass(frozen=True)
class Cost:
    """Median seconds of a gradient and of an HVP (which also gives the gradient), matmul
    FLOPs of each, and the bytes each keeps between its forward and backward passes."""

    grad_s: float
    hvp_s: float
    grad_flops: int
    hvp_flops: int
    grad_kept: int
    hvp_kept: int
    repeats: int

    @property
    def ratio(self) -> float:
        return self.hvp_s / self.grad_s


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_flops(graph: Graph, rows: int) -> tuple[int, int]:
    """Matmul FLOPs of a gradient and of an HVP, from the rules in graphpart/ir/ops.py.

    A matmul z = x W^T of (rows x n) by (m x n) costs u = 2 rows n m per product. Gradient:
    forward u, dW u, dx u (unless x is the data). HVP, on top: dz = dx W^T + x dW^T (one term
    less on the data), d(dW) = dg^T x + g^T dx, d(dx) = dg W + g dW.
    """
    grad = hvp = 0
    data = {v.name for v in graph.inputs}
    for o in graph.ops:
        if o.op != "matmul":
            continue
        m, n = graph.var(o.inputs[1]).shape
        u = 2 * rows * int(n) * int(m)
        first = o.inputs[0] in data
        g = u * (2 if first else 3)
        grad += g
        hvp += g + u * (1 if first else 2) + u * (1 if first else 2) + (0 if first else 2 * u)
    return grad, hvp


def measure(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
    v: Mapping[str, np.ndarray],
    repeats: int,
) -> Cost:
    rows = len(batch["x"])
    grad_s = _median_seconds(lambda: value_and_grad(graph, params, batch), repeats)
    hvp_s = _median_seconds(lambda: value_grad_hvp(graph, params, batch, v), repeats)
    gf, hf = matmul_flops(graph, rows)
    item = next(iter(params.values())).dtype.itemsize
    gk, hk = kept_bytes(graph, rows, item)
    return Cost(grad_s, hvp_s, gf, hf, gk, hk, repeats)
