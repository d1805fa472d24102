"""Per-layer costs measured with the real kernels, in this process (for `--cost measured`)."""

from __future__ import annotations

import time

import numpy as np

from graphpart.ir.graph import Graph
from graphpart.optim import SGD
from graphpart.params import init_params
from graphpart.plan.stages import make_plan
from workers.stage import StageWorker


def measured_costs(
    graph: Graph, batch: int, dtype: str = "float32", repeats: int = 5, seed: int = 0
) -> list[float]:
    """Seconds per forward + backward of each layer, measured with the real kernels.

    Each layer runs as its own one-layer stage in this process on random data of the right
    shape (the median of `repeats` after one warm-up), so the figure includes exactly what a
    stage worker does for that layer: its matmuls, fused elementwise kernels and copies.
    """
    plan = make_plan(graph, [1] * len(graph.layers))
    params = init_params(graph, seed, dtype)
    rng = np.random.default_rng(seed)
    out = []
    for st in plan.stages:
        w = StageWorker(
            st.graph,
            {p: params[p] for p in st.params},
            SGD(lr=1e-3),
            output=st.output,
            input_grad=st.index > 0,
            max_rows=batch,
            index=st.index,
            keep_events=False,
        )
        x = rng.standard_normal(st.graph.var(st.input).concrete_shape(batch)).astype(dtype)
        y = None
        if st.is_last:
            lab = st.graph.labels[0]
            q = st.graph.var("o").shape[-1]
            y = (
                rng.integers(0, q, batch)
                if lab.shape == ("B",)
                else rng.standard_normal((batch, q)).astype(dtype)
            )
        g = (
            None
            if st.is_last
            else rng.standard_normal(st.graph.var(st.output).concrete_shape(batch)).astype(dtype)
        )
        times = []
        for i in range(repeats + 1):
            t = time.perf_counter()
            w.forward(0, x, y, 1.0 / batch)
            w.backward(0, g, 1.0 / batch)
            if i:
                times.append(time.perf_counter() - t)
        w.zero_grad()
        out.append(float(np.median(times)))
    return out
