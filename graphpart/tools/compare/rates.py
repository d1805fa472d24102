"""This machine's rates for `plan --auto`: each layer's kernels, matmul FLOP/s, memcpy, a hop."""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from graphpart.engines.measure import layer_times
from graphpart.ir.graph import Graph
from graphpart.optim import Optimizer, make_optimizer
from graphpart.plan.auto import Rates
from graphpart.plan.workload import Workload
from graphpart.tools.compare.project import hop_seconds

ROWS = (4, 16, 64, 256, 1024)  # micro-batch sizes the matmul rate is measured at


def matmul_rate(rows: int, threads: int, dtype: str, seconds: float, n: int = 1024) -> float:
    """FLOP/s of (rows x n) @ (n x n), as a layer's forward multiplies, with `threads` threads."""
    a, w = np.ones((rows, n), dtype), np.ones((n, n), dtype)
    out = np.empty((rows, n), dtype)
    with threadpool_limits(threads):
        np.matmul(a, w, out=out)
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            np.matmul(a, w, out=out)
            count += 1
        return 2 * rows * n * n * count / (time.perf_counter() - t0)


def layer_rows(batch: int, devices: int, most_microbatches: int = 32) -> tuple[int, ...]:
    """The micro-batch sizes to time each layer at: `batch`, and the powers of two below it
    down to the fewest rows the search gives a micro-batch (a replica's share of `devices`
    in `most_microbatches`); between them the time model interpolates."""
    low = max(1, batch // (max(1, devices) * most_microbatches))
    rows, r = {batch}, 1
    while r < batch:
        if r * 2 > low:
            rows.add(r)
        r *= 2
    return tuple(sorted(rows))


def measure_rates(
    threads: int,
    dtype: str = "float32",
    seconds: float = 0.08,
    graph: Graph | None = None,
    workload: Workload | None = None,
    devices: int = 1,
) -> Rates:
    """The matmul rate with `threads` BLAS threads at several micro-batch sizes (few rows run
    far below the peak), copy bandwidth (16 MiB), and a 1 MiB shared-memory hop's time less
    its copy (its fixed latency); with a `graph` and its `workload`, also each layer's F, I, W
    and update run by stage workers here with `threads` threads (`layer_times`, at the
    `layer_rows` of the workload's batch on `devices`), which the time model then reads."""
    layers = None
    if graph is not None and workload is not None:
        opt = workload.optimizer
        if not isinstance(opt, Optimizer):
            opt = make_optimizer(opt, lr=1e-3, momentum=workload.momentum)
        with threadpool_limits(threads):
            layers = layer_times(
                graph, layer_rows(workload.batch, devices), str(workload.dtype), opt
            )
    by_rows = tuple((r, matmul_rate(r, threads, dtype, seconds)) for r in ROWS)
    flops = max(f for _, f in by_rows)
    src = np.ones(4 * 2**20, np.float32)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(5))
    copy = src.nbytes / best
    hop = hop_seconds(2**20)
    return Rates(
        flops_per_s=flops,
        copy_bytes_per_s=copy,
        hop_s=max(0.0, hop - 2**20 / copy),
        by_rows=by_rows,
        layers=layers,
    )


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t
