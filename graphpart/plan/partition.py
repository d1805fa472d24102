"""The partitioner: Graph + stage count + strategy -> Plan (stages, boundary tensors, costs)."""

from __future__ import annotations

from collections.abc import Sequence

from graphpart.errors import PlanError
from graphpart.ir.graph import Graph
from graphpart.plan import balance as bal
from graphpart.plan.batching import split_batch
from graphpart.plan.memory import stage_memory_cost
from graphpart.plan.stages import Plan, Stage, build_stage, layer_flops, make_plan, op_flops
from graphpart.units import human_bytes

STRATEGIES = ("uniform", "balanced", "memory")

__all__ = [
    "STRATEGIES",
    "Plan",
    "Stage",
    "build_stage",
    "layer_flops",
    "make_plan",
    "op_flops",
    "partition",
    "split_batch",
]


def partition(
    graph: Graph,
    stages: int,
    strategy: str = "balanced",
    *,
    layer_costs: Sequence[float] | None = None,
    memory_cost: bal.Cost | None = None,
    budgets: Sequence[float] | None = None,
) -> Plan:
    """Split `graph` into `stages` contiguous stages.

    uniform: equal layer counts. balanced: minimise the slowest stage, by per-sample FLOPs or
    by `layer_costs` (e.g. per-layer times measured in a profiling pass). memory: minimise the
    largest per-stage memory, where `memory_cost(first_layer, stop_layer, stage_index)` gives
    a stage's predicted bytes (graphpart.plan.memory supplies it); with `budgets` (bytes per stage),
    fit them or fail before anything starts.

    >>> from graphpart.ir import mlp
    >>> plan = partition(mlp([64, 64, 64, 10]), 2, "uniform")
    >>> [(st.layers, st.params, st.output) for st in plan.stages]
    [((1, 2), ('W1', 'W2'), 'h2'), ((3,), ('W3',), None)]
    """
    if strategy not in STRATEGIES:
        raise PlanError(f"strategy={strategy!r}; valid: {', '.join(STRATEGIES)}")
    layers = graph.layers
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise PlanError(f"stages={stages!r}: must be a positive integer")
    if stages > len(layers):
        raise PlanError(
            f"stages={stages} exceeds the {len(layers)} partitionable layers of this model; "
            f"use 1..{len(layers)} (or add hidden layers)"
        )
    flops = layer_flops(graph)
    if layer_costs is not None:
        costs = [float(c) for c in layer_costs]
        if len(costs) != len(layers):
            raise PlanError(
                f"layer_costs has {len(costs)} entries; the model has {len(layers)} layers"
            )
    else:
        costs = [float(sum(flops[layer])) for layer in layers]
    if budgets is not None and strategy != "memory":
        raise PlanError(f"budgets are only used by strategy 'memory', not {strategy!r}")
    if strategy == "uniform":
        sizes = bal.uniform(len(layers), stages)
    elif strategy == "balanced":
        sizes = bal.balance(costs, stages)
    else:
        if memory_cost is None:
            memory_cost = stage_memory_cost(graph, stages)
        if budgets is not None and len(budgets) != stages:
            raise PlanError(f"{len(budgets)} budgets given for {stages} stages; give one per stage")
        limit = None if budgets is None else (lambda k: float(budgets[k]))
        sizes = bal.split(
            len(layers), stages, memory_cost, limit, item="layer", part="stage", fmt=human_bytes
        )
    return make_plan(graph, sizes, strategy, costs)
