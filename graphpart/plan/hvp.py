"""The pipelined Hessian-vector product: forward-over-reverse stage by stage, in one process.

The same stages, micro-batches and schedule as a pipeline's gradient step; each boundary
activation travels with its tangent (forward), each boundary cotangent with its tangent
(backward). Each stage's actions run in the schedule's order, each as soon as its input has
arrived (the order a pipeline would run them), and each micro-batch's values and tangents are
dropped after its backward, as a worker frees a slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from graphpart.autodiff import check_batch, check_params, forward
from graphpart.errors import PlanError
from graphpart.hvp import Tree, backward_tangents, check_direction, forward_tangents
from graphpart.ir.graph import Graph
from graphpart.ir.ops import get
from graphpart.plan.batching import split_batch
from graphpart.plan.schedule import Action, make
from graphpart.plan.stages import Plan


def pipelined_hvp(
    plan: Plan,
    params: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
    v: Mapping[str, np.ndarray],
    microbatches: int = 1,
    schedule: str = "1f1b",
) -> tuple[float, Tree, Tree]:
    """J, dJ/dW and H v computed as a pipeline computes them (stages, micro-batches, schedule).

    Each micro-batch's loss is scaled by 1/N of the whole batch, so gradients and HVPs summed
    over micro-batches are the whole batch's; each stage's regulariser part (its gradient
    lambda W and its HVP part lambda v_W) is added once per step, by the stage owning W.
    """
    graph = plan.graph
    dtype = check_params(graph, params)
    tv = check_direction(graph, v, dtype)
    data = check_batch(graph, batch, dtype)
    n = len(data["x"])
    scale = 1.0 / n
    rows = split_batch(n, microbatches)
    actions = make(schedule, plan.k, len(rows))
    one = np.ones((), dtype=dtype)
    sent_fwd: dict[tuple[int, int], tuple[Any, Any]] = {}  # (stage, mb) -> (h, dh) sent on
    sent_bwd: dict[tuple[int, int], tuple[Any, Any]] = {}  # (stage, mb) -> (g, dg) sent back
    kept: dict[tuple[int, int], tuple[dict, dict]] = {}  # a stage's values and tangents, per mb
    grads: Tree = {}
    hv: Tree = {}
    J = 0.0

    def ready(k: int, a: Action) -> bool:
        if a.kind == "F":
            return k == 0 or (k - 1, a.mb) in sent_fwd
        return (k, a.mb) in kept and (plan.stages[k].is_last or (k + 1, a.mb) in sent_bwd)

    def run(k: int, a: Action) -> None:
        nonlocal J
        st = plan.stages[k]
        r = rows[a.mb]
        if a.kind == "F":
            h, dh = (data["x"][r], None) if k == 0 else sent_fwd.pop((k - 1, a.mb))
            feed = {st.input: h, **{lv.name: data[lv.name][r] for lv in st.graph.labels}}
            sp = {p: params[p] for p in st.params}
            values = forward(st.graph, sp, feed, scale=scale)
            tvals = forward_tangents(
                st.graph, values, {st.input: dh, **{p: tv[p] for p in st.params}}, scale=scale
            )
            kept[(k, a.mb)] = (values, tvals)
            if st.is_last:
                J += float(values[graph.loss])
            else:
                sent_fwd[(k, a.mb)] = (values[st.output], tvals[st.output])
            return
        values, tvals = kept.pop((k, a.mb))
        if st.is_last:
            seeds, tseeds = {graph.loss: one}, {}
        else:
            g, dg = sent_bwd.pop((k + 1, a.mb))
            seeds, tseeds = {st.output: g}, {st.output: dg}
        gr, tg = backward_tangents(st.graph, values, tvals, seeds, tseeds, scale=scale)
        for p in st.params:
            _accumulate(grads, p, gr.get(p))
            _accumulate(hv, p, tg.get(p))
        if k > 0:
            sent_bwd[(k, a.mb)] = (gr.get(st.input), tg.get(st.input))

    pos = [0] * plan.k
    while any(pos[k] < len(actions[k]) for k in range(plan.k)):
        moved = False
        for k in range(plan.k):
            if pos[k] < len(actions[k]) and ready(k, actions[k][pos[k]]):
                run(k, actions[k][pos[k]])
                pos[k] += 1
                moved = True
        if not moved:  # pragma: no cover - the schedules of plan.schedule never deadlock
            raise PlanError(f"schedule {schedule!r} deadlocks at positions {pos}")
    for st in plan.stages:  # the regulariser, once per step, on the stage owning each weight
        J += _regulariser(st.graph, params, tv, one, grads, hv)
    for p in graph.params:  # a parameter no path reached (cannot happen in an MLP)
        grads.setdefault(p.name, np.zeros(p.shape, dtype))
        hv.setdefault(p.name, np.zeros(p.shape, dtype))
    names = [p.name for p in graph.params]
    return J, {p: grads[p] for p in names}, {p: hv[p] for p in names}


def _accumulate(tree: Tree, name: str, value: Any) -> None:
    if value is not None:
        tree[name] = value if name not in tree else tree[name] + value


def _regulariser(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    tv: Mapping[str, np.ndarray],
    one: np.ndarray,
    grads: Tree,
    hv: Tree,
) -> float:
    """Add a stage's s_k = lambda/2 sum ||W||^2 to the gradients and HVPs; return s_k."""
    reg = next(o for o in graph.ops if o.op == "l2")
    values: dict[str, Any] = {w: params[w] for w in reg.inputs}
    values[reg.output] = get("l2").forward([values[w] for w in reg.inputs], dict(reg.attrs))
    tvals = {w: tv[w] for w in reg.inputs}
    sub = Graph(graph.vars, (reg,), output=reg.output)
    gr, tg = backward_tangents(sub, values, tvals, {reg.output: one})
    for w in reg.inputs:
        _accumulate(grads, w, gr.get(w))
        _accumulate(hv, w, tg.get(w))
    return float(values[reg.output])
