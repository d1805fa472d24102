"""Per-layer costs measured with the real kernels, in this process (--cost measured, --auto)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from graphpart.ir.graph import Graph
from graphpart.optim import SGD, Optimizer
from graphpart.params import init_params
from graphpart.plan.layer_times import LayerTimes
from graphpart.plan.stages import make_plan
from workers.stage import StageWorker


def replica_buckets(graph: Graph, dtype: str, replicas: int) -> tuple[int, ...]:
    """Bytes of each bucket a data-parallel replica of the whole `graph` all-reduces its
    gradients in, in a ring of `replicas`, in order: the buckets its worker plans
    (workers/buckets.py: cut at layer ends, and the first layer's weight gradient in row
    blocks), at the default bucket size, as `DataParallel` runs them."""
    (st,) = make_plan(graph, [len(graph.layers)]).stages
    params = init_params(graph, 0, dtype)
    worker = StageWorker(
        st.graph,
        {p: params[p] for p in st.params},
        SGD(lr=1e-3),
        output=st.output,
        input_grad=False,
        max_rows=1,
        index=0,
        keep_events=False,
        replicated=replicas > 1,
    )
    itemsize = np.dtype(dtype).itemsize
    return tuple((b.stop - b.start) * itemsize for b in worker.buckets(replicas))


def measured_costs(
    graph: Graph, batch: int, dtype: str = "float32", repeats: int = 5, seed: int = 0
) -> list[float]:
    """Seconds per forward + backward of each layer at `batch` rows, measured with the real
    kernels (`layer_times`: the median of `repeats`), so the figure includes exactly what a
    stage worker does for that layer: its matmuls, fused elementwise kernels and copies."""
    lt = layer_times(graph, (batch,), dtype, repeats=repeats, seed=seed)
    return [sum(t) for t in lt.seconds[0]]


def layer_times(
    graph: Graph,
    rows: Sequence[int],
    dtype: str = "float32",
    optimizer: Optimizer | None = None,
    repeats: int = 5,
    seed: int = 0,
    sync: Callable[[], object] | None = None,
) -> LayerTimes:
    """Each layer's forward, input gradient and weight gradient of one micro-batch at each of
    `rows`, and its update (`optimizer`'s step; SGD if None), each the median of `repeats`
    after one untimed round (the update's over the steps at every size). A round is a step
    of two micro-batches at each row count in turn: the first micro-batch's times are
    LayerTimes.seconds, the second's (its weight gradient added to the first's)
    LayerTimes.warm.

    Every layer runs as its own one-layer stage worker in this process, and a pass runs them
    as a step of the whole model does: the forwards in order, each taking the previous one's
    output, then each backward's I and W in reverse, each taking the next one's input
    cotangent, then every layer's update in order; so what a layer reads is where a step
    leaves it (its input just written, its weights and optimizer state out of cache since its
    last action). An update timed back to back with itself, its buffers still in cache, ran
    in 3.2 ms where a step's took 4.8-5.9 ms (MLP 784-1024-1024-1024-10, Adam).

    `sync` (a barrier's wait), where given, is called before each pass's forwards and its
    backwards, and before each step's updates: processes timing at once then run each phase
    in step, as data-parallel replicas do (their updates all start when the all-reduce
    ends)."""
    wait = sync if sync is not None else (lambda: None)
    plan = make_plan(graph, [1] * len(graph.layers))
    params = init_params(graph, seed, dtype)
    rng = np.random.default_rng(seed)
    top = max(rows)
    workers = [
        StageWorker(
            st.graph,
            {p: params[p] for p in st.params},
            optimizer if optimizer is not None else SGD(lr=1e-3),
            output=st.output,
            input_grad=st.index > 0,
            max_rows=top,
            index=st.index,
            keep_events=False,
        )
        for st in plan.stages
    ]
    first, last = plan.stages[0], plan.stages[-1]
    x0 = rng.standard_normal(first.graph.var(first.input).concrete_shape(top)).astype(dtype)
    loss = next(o for o in last.graph.ops if o.output == last.graph.loss)
    q = last.graph.var(loss.inputs[0]).shape[-1]  # the prediction's width
    y0 = (
        rng.integers(0, q, top)
        if last.graph.labels[0].shape == ("B",)
        else rng.standard_normal((top, q)).astype(dtype)
    )
    ups: list[list[float]] = [[] for _ in workers]
    # by pass (a step's first micro-batch, a later one), row count, layer, kind (F, I, W): a
    # round is a step of two micro-batches at every row count, so that a burst of other
    # work on the machine slows one round of each, not every pass of one
    timed = [[[[[], [], []] for _ in workers] for _ in rows] for _ in range(2)]
    for rep in range(repeats + 1):
        for r, n in enumerate(rows):
            for by_layer in (timed[0][r], timed[1][r]):
                x: np.ndarray | None = x0[:n]
                wait()
                for w, t in zip(workers, by_layer, strict=True):  # each output the next's input
                    t0 = time.perf_counter()
                    x = w.forward(0, x, y0[:n] if w is workers[-1] else None, 1.0 / n)
                    if rep:
                        t[0].append(time.perf_counter() - t0)
                g = None  # each layer's input cotangent the previous layer's
                wait()
                for w, t in reversed(list(zip(workers, by_layer, strict=True))):
                    t0 = time.perf_counter()
                    g = w.backward_input(0, g, 1.0 / n)
                    t1 = time.perf_counter()
                    w.backward_weight(0, 1.0 / n)
                    if rep:
                        t[1].append(t1 - t0)
                        t[2].append(time.perf_counter() - t1)
            wait()
            for w, u in zip(workers, ups, strict=True):
                t0 = time.perf_counter()
                w.finish(update=True)
                if rep:
                    u.append(time.perf_counter() - t0)
    first, later = (
        tuple(tuple(tuple(statistics.median(k) for k in t) for t in by_layer) for by_layer in p)
        for p in timed
    )
    return LayerTimes(
        tuple(graph.layers), tuple(rows), first, tuple(statistics.median(u) for u in ups), later
    )
