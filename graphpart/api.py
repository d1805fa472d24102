"""Public functions that span layers: gradients by the oracle, or as a pipeline computes them."""

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
    """J and dJ/dW for every parameter W, by reverse-mode differentiation in one process.

    With a `plan` (or `stages`, and `microbatches`), the same numbers are computed the way a
    pipeline computes them: per stage, per micro-batch, boundary tensors and their gradients
    passed between stages, parameter gradients accumulated over micro-batches.
    """
    if plan is None and stages is None and microbatches == 1:
        return autodiff.value_and_grad(graph, params, batch)
    if plan is None:
        plan = partition(graph, stages or 1)
    return pipelined_value_and_grad(plan, params, batch, microbatches)
