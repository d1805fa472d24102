"""Where a diverged step went non-finite: the first variable of the graph whose value is not."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from graphpart.autodiff import forward
from graphpart.plan.stages import Plan


def first_non_finite(
    plan: Plan, params: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]
) -> str | None:
    """The first variable, in the graph's topological order (parameters, then each operator's
    output), holding a NaN or an infinity when the graph is evaluated on `batch` with
    `params`, described with its stage; None if every value is finite."""
    graph, stage = plan.graph, plan.stage_of()
    for v in graph.params:
        w = params.get(v.name)
        if w is not None and not np.all(np.isfinite(w)):
            return f"parameter {v.name} (stage {stage.get(v.name, 0)})"
    with np.errstate(all="ignore"):
        values = forward(graph, params, batch)
    for op in graph.ops:
        if not np.all(np.isfinite(values[op.output])):
            return (
                f"{op.output} = {op.op}({', '.join(op.inputs)}) "
                f"(stage {stage.get(op.output, plan.k - 1)})"
            )
    return None
