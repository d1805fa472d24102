"""The partitioner: Graph + stage count + strategy -> Plan (stages, boundary tensors, costs).

A stage is a contiguous run of layers. Its sub-graph is a valid Graph of its own: its input is
x (stage 0) or the boundary value of the stage before, declared as an input; it ends in its
boundary value (sent onward) or, on the last stage, in the loss L. The regulariser
s = lambda/2 sum ||W||^2 reads every stage's weights, so each stage gets its own part
s_k = lambda/2 sum over *its* weights and J = sum_k s_k + L: no parameter moves between stages
and each lambda W is added exactly once, by the stage that owns W.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphpart.plan import balance as bal
from graphpart.errors import PlanError
from graphpart.ir.graph import BATCH, Graph, Op, Var
from graphpart.ir.ops import get
from graphpart.units import human_bytes

STRATEGIES = ("uniform", "balanced", "memory")


@dataclass(frozen=True)
class Stage:
    index: int
    layers: tuple[int, ...]
    graph: Graph
    input: str  # "x" on stage 0, else the boundary value received
    output: str | None  # boundary value sent to the next stage; None on the last stage
    params: tuple[str, ...]
    flops_fwd: int  # per sample
    flops_bwd: int  # per sample
    input_width: int  # boundary elements per sample received (0 on stage 0: data, not boundary)
    output_width: int  # boundary elements per sample sent

    @property
    def is_last(self) -> bool:
        return self.output is None

    def param_count(self) -> int:
        return sum(int(np.prod(self.graph.var(p).shape)) for p in self.params)


@dataclass(frozen=True)
class Plan:
    graph: Graph
    stages: tuple[Stage, ...]
    strategy: str
    layer_costs: tuple[float, ...]

    @property
    def k(self) -> int:
        return len(self.stages)

    def stage_of(self) -> dict[str, int]:
        """Stage index of every variable and operator name of the full graph (for drawing)."""
        out: dict[str, int] = {}
        for st in self.stages:
            for v in st.graph.vars:
                if v.name in self.graph and v.name not in out:
                    out[v.name] = st.index
            for o in st.graph.ops:
                out[o.name] = st.index
        out.setdefault("s", self.k - 1)
        out.setdefault("J", self.k - 1)
        out.setdefault("l2", self.k - 1)
        out.setdefault("objective", self.k - 1)
        return out

    def sizes(self) -> list[int]:
        return [len(s.layers) for s in self.stages]


def layer_flops(graph: Graph) -> dict[int, tuple[int, int]]:
    """Per-sample forward and backward FLOPs of each layer (ops of layer 0 are spread later)."""
    out: dict[int, tuple[int, int]] = {layer: (0, 0) for layer in graph.layers}
    for o in graph.ops:
        if o.layer == 0:
            continue
        f, b = op_flops(graph, o, 1)
        out[o.layer] = (out[o.layer][0] + f, out[o.layer][1] + b)
    return out


def op_flops(graph: Graph, o: Op, batch: int) -> tuple[int, int]:
    ins = [graph.var(n).concrete_shape(batch) for n in o.inputs]
    return get(o.op).flops(ins, graph.var(o.output).concrete_shape(batch))


def partition(
    graph: Graph,
    stages: int,
    strategy: str = "balanced",
    *,
    layer_costs: Sequence[float] | None = None,
    memory_cost: Any = None,
    budgets: Sequence[float] | None = None,
) -> Plan:
    """Split `graph` into `stages` contiguous stages.

    uniform: equal layer counts. balanced: minimise the slowest stage, by per-sample FLOPs or
    by `layer_costs` (e.g. per-layer times measured in a profiling pass). memory: minimise the
    largest per-stage memory, where `memory_cost(first_layer, stop_layer, stage_index)` gives
    a stage's predicted bytes (graphpart.plan.memory supplies it); with `budgets` (bytes per stage),
    fit them or fail before anything starts.
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
            from graphpart.plan.memory import stage_memory_cost

            memory_cost = stage_memory_cost(graph, stages)
        if budgets is not None and len(budgets) != stages:
            raise PlanError(f"{len(budgets)} budgets given for {stages} stages; give one per stage")
        limit = None if budgets is None else (lambda k: float(budgets[k]))
        sizes = bal.split(
            len(layers), stages, memory_cost, limit, item="layer", part="stage", fmt=human_bytes
        )
    return make_plan(graph, sizes, strategy, costs)


def make_plan(
    graph: Graph,
    sizes: Sequence[int],
    strategy: str = "manual",
    costs: Sequence[float] | None = None,
) -> Plan:
    """A Plan from explicit stage sizes (layers per stage)."""
    layers = graph.layers
    if sum(sizes) != len(layers) or any(s < 1 for s in sizes):
        raise PlanError(
            f"stage sizes {list(sizes)} must be positive and sum to the {len(layers)} layers"
        )
    groups, start = [], 0
    for s in sizes:
        groups.append(tuple(layers[start : start + s]))
        start += s
    flops = layer_flops(graph)
    built = []
    prev_out: str | None = None
    for k, group in enumerate(groups):
        st = _stage(graph, k, group, prev_out, last=k == len(groups) - 1, flops=flops)
        built.append(st)
        prev_out = st.output
    costs = tuple(costs) if costs is not None else tuple(float(sum(flops[x])) for x in layers)
    return Plan(graph, tuple(built), strategy, costs)


def _stage(
    graph: Graph,
    k: int,
    layers: tuple[int, ...],
    input_name: str | None,
    last: bool,
    flops: Mapping[int, tuple[int, int]],
) -> Stage:
    ops = [o for o in graph.ops if o.layer in layers]
    produced = {o.output for o in ops}
    names: list[str] = []
    for o in ops:
        for n in (*o.inputs, o.output):
            if n not in names:
                names.append(n)
    inp = input_name or "x"
    for o in ops:
        for n in o.inputs:
            v = graph.var(n)
            if v.role == "value" and n not in produced and n != inp:
                raise PlanError(
                    f"stage {k} reads {n!r} from a stage other than the one before it; "
                    "only chains of layers can be pipelined"
                )
    vars_: list[Var] = []
    for n in names:
        v = graph.var(n)
        if n == inp and v.role == "value":
            v = Var(v.name, "input", v.shape, v.layer)
        vars_.append(v)
    reg = next((o for o in graph.ops if o.op == "l2"), None)
    weights = tuple(n for n in (reg.inputs if reg else ()) if graph.var(n).layer in layers)
    s_name, j_name = ("s", "J") if k == 0 and last else (f"s@{k}", f"J@{k}")
    lam = reg.attr("weight_decay", 0.0) if reg else 0.0
    vars_.append(Var(s_name, "value", (), 0))
    ops.append(
        Op("l2" if s_name == "s" else f"l2@{k}", "l2", weights, s_name, 0, (("weight_decay", lam),))
    )
    vars_.append(Var(j_name, "value", (), 0))
    j_in = (graph.loss, s_name) if last else (s_name,)
    ops.append(Op("objective" if j_name == "J" else f"objective@{k}", "add", j_in, j_name, 0))
    output = None
    if not last:
        output = [o for o in ops if o.layer in layers][-1].output
    sub = Graph(
        tuple(vars_), tuple(ops), output=j_name, loss=graph.loss if last else "", info=graph.info
    ).validate()
    params = tuple(v.name for v in sub.params)
    f = sum(flops[x][0] for x in layers)
    b = sum(flops[x][1] for x in layers)
    in_w = 0 if k == 0 else int(np.prod([d for d in graph.var(inp).shape if d != BATCH]))
    out_w = (
        0 if output is None else int(np.prod([d for d in graph.var(output).shape if d != BATCH]))
    )
    return Stage(k, layers, sub, inp, output, params, f, b, in_w, out_w)


def split_batch(n: int, microbatches: int) -> list[slice]:
    """Row ranges of `microbatches` near-equal micro-batches of an n-row batch (none empty)."""
    if microbatches < 1:
        raise PlanError(f"microbatches={microbatches}: must be a positive integer")
    if microbatches > n:
        raise PlanError(f"microbatches={microbatches} exceeds the batch of {n} rows; use 1..{n}")
    bounds = np.linspace(0, n, microbatches + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


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
    from graphpart.autodiff import backward, check_batch, check_params, forward

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
