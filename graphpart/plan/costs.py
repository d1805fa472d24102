"""Per-layer costs for the partitioner from FLOPs (measured times: graphpart.engines.measure)."""

from __future__ import annotations

from graphpart.ir.graph import Graph
from graphpart.plan.stages import layer_flops


def flop_costs(graph: Graph) -> list[float]:
    """Forward + backward FLOPs per sample of each layer."""
    return [float(sum(v)) for _, v in sorted(layer_flops(graph).items())]
