"""The reference `value_and_grad`: the oracle, or a pipeline's arithmetic, with the reference ops.

`gp.value_and_grad` (graphpart.engines.grad) runs the engine's executor instead and calls this
one for `executor="reference"`; the tests hold the two equal.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from graphpart import autodiff
from graphpart.ir.graph import Graph
from graphpart.plan.partition import partition
from graphpart.plan.reference import pipelined_value_and_grad
from graphpart.plan.stages import Plan


def value_and_grad(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
    plan: Plan | None = None,
    *,
    stages: int | None = None,
    microbatches: int = 1,
) -> tuple[float, dict[str, np.ndarray]]:
    """J and dJ/dW for every parameter W, by reverse-mode differentiation in one process, with
    the reference ops (NumPy, graphpart.autodiff): what the fast path is tested against.

    With a `plan` (or `stages`, and `microbatches`), the same numbers are computed the way a
    pipeline computes them: per stage, per micro-batch, boundary tensors and their gradients
    passed between stages, parameter gradients accumulated over micro-batches.
    """
    if plan is None and stages is None and microbatches == 1:
        return autodiff.value_and_grad(graph, params, batch)
    if plan is None:
        plan = partition(graph, stages or 1)
    return pipelined_value_and_grad(plan, params, batch, microbatches)
