"""The pipelined reference: a pipeline's arithmetic (stage by stage, micro-batch by micro-batch)
computed with the reference ops in one process."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from graphpart.autodiff import backward, check_batch, check_params, forward
from graphpart.ir.graph import Graph
from graphpart.ir.ops import get
from graphpart.plan.batching import split_batch
from graphpart.plan.stages import Plan


def pipelined_value_and_grad(
    plan: Plan,
    params: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
    microbatches: int = 1,
) -> tuple[float, dict[str, np.ndarray]]:
    """J and gradients computed stage by stage and micro-batch by micro-batch (reference ops).

    The same arithmetic a pipeline performs, in one process: forward of each micro-batch
    through the stages, the loss of each scaled by 1/N of the whole batch, backward in reverse
    stage order from the received boundary gradients, parameter gradients summed over
    micro-batches, and each stage's regulariser part added once.
    """
    dtype = check_params(plan.graph, params)
    data = check_batch(plan.graph, batch, dtype)
    n = len(data["x"])
    scale = 1.0 / n
    grads: dict[str, np.ndarray] = {}
    J = 0.0
    one = np.ones((), dtype=dtype)
    for rows in split_batch(n, microbatches):
        acts: list[dict] = []
        h = data["x"][rows]
        for st in plan.stages:
            feed = {st.input: h}
            feed.update({v.name: data[v.name][rows] for v in st.graph.labels})
            sp = {p: params[p] for p in st.params}
            values = forward(st.graph, sp, feed, scale=scale)
            acts.append(values)
            h = values[st.output] if st.output else None
        J += float(acts[-1][plan.graph.loss])
        g = None
        for st, values in zip(reversed(plan.stages), reversed(acts), strict=True):
            seeds = {plan.graph.loss: one} if st.is_last else {st.output: g}
            gr = backward(st.graph, values, seeds, scale=scale)
            for p in st.params:
                if p in gr:
                    grads[p] = gr[p] if p not in grads else grads[p] + gr[p]
            g = gr.get(st.input)
    for st in plan.stages:  # the regulariser, once per step, on the stage owning each weight
        sp = {p: params[p] for p in st.params}
        values = {**sp}
        reg = next(o for o in st.graph.ops if o.op == "l2")
        values[reg.output] = get("l2").forward([sp[w] for w in reg.inputs], dict(reg.attrs))
        J += float(values[reg.output])
        gr = backward(Graph(st.graph.vars, (reg,), output=reg.output), values, {reg.output: one})
        for w in reg.inputs:
            grads[w] = grads[w] + gr[w] if w in grads else gr[w]
    for p in plan.graph.params:  # a parameter no path reached (cannot happen in an MLP)
        grads.setdefault(p.name, np.zeros(p.shape, dtype))
    return J, {v.name: grads[v.name] for v in plan.graph.params}
