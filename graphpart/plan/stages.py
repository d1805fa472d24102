"""Stages and plans: a stage is a contiguous run of layers with its own valid sub-graph.

A stage's sub-graph reads x (stage 0) or the boundary value of the stage before, declared as
an input; it ends in its boundary value (sent onward) or, on the last stage, in the loss L.
The regulariser s = lambda/2 sum ||W||^2 reads every stage's weights, so each stage gets its
own part s_k = lambda/2 sum over *its* weights and J = sum_k s_k + L: no parameter moves
between stages and each lambda W is added exactly once, by the stage that owns W.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from graphpart.errors import PlanError
from graphpart.ir.graph import BATCH, Graph, Op, Var
from graphpart.ir.ops import get


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: its layers, its sub-graph, its boundary tensors and FLOPs."""

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
    flops_wgrad: int = 0  # per sample: the part of flops_bwd that is weight gradients (W)

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


def layer_weight_flops(graph: Graph) -> dict[int, int]:
    """Per-sample FLOPs of each layer's weight gradients: the W part of its backward."""
    out: dict[int, int] = {layer: 0 for layer in graph.layers}
    for o in graph.ops:
        if o.layer != 0:
            ins = [graph.var(n).concrete_shape(1) for n in o.inputs]
            out[o.layer] += get(o.op).weight_flops(ins, graph.var(o.output).concrete_shape(1))
    return out


def op_flops(graph: Graph, o: Op, batch: int) -> tuple[int, int]:
    ins = [graph.var(n).concrete_shape(batch) for n in o.inputs]
    return get(o.op).flops(ins, graph.var(o.output).concrete_shape(batch))


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
        st = build_stage(graph, k, group, prev_out, last=k == len(groups) - 1, flops=flops)
        built.append(st)
        prev_out = st.output
    costs = tuple(costs) if costs is not None else tuple(float(sum(flops[x])) for x in layers)
    return Plan(graph, tuple(built), strategy, costs)


def build_stage(
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
    wgrad = layer_weight_flops(graph)
    w = sum(wgrad[x] for x in layers)
    return Stage(k, layers, sub, inp, output, params, f, b, in_w, out_w, w)
