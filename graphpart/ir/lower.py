"""Lowering: a stage's graph to the executor's steps, saved values and ledger-named buffers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from graphpart.ir.graph import BATCH, Graph, Op, Shape
from graphpart.ir.ops import ACTIVATIONS, get

# The memory categories every buffer belongs to: the ledger's, the memory model's, the reports'.
CATEGORIES: tuple[str, ...] = (
    "parameter",
    "gradient",
    "optimizer",
    "activation",
    "boundary",
    "workspace",
)
# Activation name -> the integer code the kernels (workers/kernels/*) branch on.
ACT_CODE: dict[str, int] = {name: i for i, name in enumerate(ACTIVATIONS)}
LABEL_DTYPE = np.dtype(np.int64)  # class labels (B,) are int64; mse targets take the model dtype

StepKind = Literal["matmul", "bias", "bias_act", "act", "loss"]


def nbytes(shape: Shape, rows: int, dtype: Any) -> int:
    """Bytes of an array of `shape` with the batch dimension set to `rows`."""
    dims = [rows if d == BATCH else int(d) for d in shape]
    return int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize


@dataclass(frozen=True)
class Step:
    """One kernel call of the forward pass (and its mirror in backward)."""

    kind: StepKind
    op: Op
    act: Op | None = None  # the fused activation of a "bias_act" step

    @property
    def activation(self) -> Op | None:
        """The activation applied: the op of an "act" step, the fused one of a "bias_act"."""
        return self.op if self.kind == "act" else self.act

    @property
    def code(self) -> int:
        """ACT_CODE of the step's activation (for "act" and "bias_act" steps)."""
        a = self.activation
        if a is None:
            raise ValueError(f"a {self.kind!r} step has no activation")
        return ACT_CODE[a.op]

    def touched(self) -> tuple[str, ...]:
        """Values the forward pass reads or writes (a loss's scalar output excluded)."""
        names = list(self.op.inputs) if self.kind == "loss" else [*self.op.inputs, self.op.output]
        if self.act is not None:
            names.append(self.act.output)
        return tuple(names)


@dataclass(frozen=True)
class BufferSpec:
    """One buffer the executor allocates, named and categorised exactly as its ledger entry."""

    name: str
    category: str
    shape: Shape  # may hold BATCH: sized by the micro-batch rows
    label: bool = False  # int64 class labels rather than the model dtype

    def dtype(self, model: Any) -> np.dtype:
        return LABEL_DTYPE if self.label else np.dtype(model)

    def nbytes(self, rows: int, model: Any) -> int:
        return nbytes(self.shape, rows, self.dtype(model))


def plan_steps(graph: Graph) -> tuple[Step, ...]:
    """The tensor ops as kernel calls: a bias_add whose only consumer is the activation right
    after it runs fused with it ("bias_act"); scalar ops (l2, add) are left out."""
    ops = [o for o in graph.ops if get(o.op).kind != "scalar"]
    steps: list[Step] = []
    i = 0
    while i < len(ops):
        o = ops[i]
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        if o.op == "matmul":
            steps.append(Step("matmul", o))
        elif o.op == "bias_add":
            if (
                nxt is not None
                and nxt.op in ACTIVATIONS
                and nxt.inputs == (o.output,)
                and len(graph.consumers(o.output)) == 1
            ):
                steps.append(Step("bias_act", o, nxt))
                i += 1
            else:
                steps.append(Step("bias", o))
        elif o.op in ACTIVATIONS:
            steps.append(Step("act", o))
        elif get(o.op).kind == "loss":
            steps.append(Step("loss", o))
        else:
            raise NotImplementedError(f"the executor cannot run op {o.op!r} ({o})")
        i += 1
    return tuple(steps)


def saved_values(graph: Graph, recompute: bool = False) -> tuple[str, ...]:
    """Values one micro-batch keeps until its backward: what some VJP reads (ops' `saves`).

    Parameters are excluded (they are held once, not per micro-batch); with recompute only the
    stage input and the labels are kept.
    """
    if recompute:
        return tuple(v.name for v in (*graph.inputs, *graph.labels))
    keep: list[str] = []
    for o in graph.ops:
        d = get(o.op)
        if d.kind == "scalar":
            continue
        names = [o.inputs[i] for i in d.saved_inputs(len(o.inputs))]
        if d.saves_output:
            names.append(o.output)
        for n in names:
            if n not in keep and graph.var(n).role != "param":
                keep.append(n)
    return tuple(keep)


def grad_aliases(steps: tuple[Step, ...]) -> dict[str, str]:
    """Cotangents computed in place: dz = dh through an activation, dm = dz through a bias.

    Maps a value to the root value whose cotangent buffer it shares.
    """
    alias: dict[str, str] = {}
    for s in steps:
        if s.kind == "bias_act":
            assert s.act is not None
            root = alias.get(s.act.output, s.act.output)
            alias[s.act.inputs[0]] = root
            alias[s.op.inputs[0]] = root
        elif s.kind in ("bias", "act"):
            alias[s.op.inputs[0]] = alias.get(s.op.output, s.op.output)
    for name, root in alias.items():  # a bias before its (unfused) activation: dm -> dz -> dh
        while root in alias:
            root = alias[root]
        alias[name] = root
    return alias


@dataclass(frozen=True)
class Lowered:
    """A stage's graph lowered for the executor (workers/program.py) and the memory model.

    `saved` live in per-micro-batch slots ("activation"); every other non-parameter value the
    forward touches is one shared `workspace` buffer; cotangents share buffers along
    `aliases`, one per root in `roots` (the order backward first needs them).
    """

    graph: Graph
    input: str
    labels: tuple[str, ...]
    output: str | None  # boundary value sent to the next stage; None on the last stage
    input_grad: bool  # whether dJ/d(input) is computed and sent back
    recompute: bool
    steps: tuple[Step, ...]
    params: tuple[str, ...]
    saved: tuple[str, ...]
    workspace: tuple[str, ...]
    aliases: Mapping[str, str]  # value -> root of its cotangent buffer
    matmul_uses: Mapping[str, int]  # weight -> matmul steps reading it, per micro-batch

    @property
    def loss_step(self) -> Step | None:
        return next((s for s in self.steps if s.kind == "loss"), None)

    def root(self, name: str) -> str:
        """The value whose cotangent buffer holds dJ/d(name)."""
        return self.aliases.get(name, name)

    def wants_grad(self, name: str) -> bool:
        """Whether backward computes dJ/d(name) for a matmul's input (not the unsent input's)."""
        return name != self.input or self.input_grad

    @property
    def roots(self) -> tuple[str, ...]:
        """Cotangent buffers (alias roots) in the order backward first writes them."""
        roots: list[str] = []

        def need(name: str) -> None:
            r = self.root(name)
            if r not in roots:
                roots.append(r)

        if self.output is not None:
            need(self.output)  # the received cotangent
        for s in reversed(self.steps):
            a = s.activation
            if s.kind == "loss":
                need(s.op.inputs[0])
                continue
            if a is not None:
                need(a.output)
                need(a.inputs[0])
            if s.kind in ("bias", "bias_act", "matmul"):
                need(s.op.output)
            if s.kind == "matmul" and self.wants_grad(s.op.inputs[0]):
                need(s.op.inputs[0])
        return tuple(roots)

    def is_label(self, name: str) -> bool:
        v = self.graph.var(name)
        return v.role == "label" and tuple(v.shape) == (BATCH,)

    # -- the ledger's names ---------------------------------------------------------------------
    def param_buffer(self, name: str) -> BufferSpec:
        return BufferSpec(f"param:{name}", "parameter", self.graph.var(name).shape)

    def grad_buffer(self, name: str) -> BufferSpec:
        return BufferSpec(f"grad:{name}", "gradient", self.graph.var(name).shape)

    def optimizer_buffer(self, slot: int, name: str) -> BufferSpec:
        return BufferSpec(f"opt[{slot}]:{name}", "optimizer", self.graph.var(name).shape)

    def slot_buffer(self, slot: int, name: str) -> BufferSpec:
        v = self.graph.var(name)
        return BufferSpec(f"act[{slot}]:{name}", "activation", v.shape, self.is_label(name))

    def work_buffer(self, name: str) -> BufferSpec:
        v = self.graph.var(name)
        return BufferSpec(f"work:{name}", "workspace", v.shape, self.is_label(name))

    def cotangent_buffer(self, root: str) -> BufferSpec:
        cat = "boundary" if root in (self.input, self.output) else "workspace"
        return BufferSpec(f"dgrad:{root}", cat, self.graph.var(root).shape)

    def buffers(self, *, in_flight: int, optimizer_slots: int) -> tuple[BufferSpec, ...]:
        """Every buffer a stage worker allocates over a run: parameters and their gradients,
        optimizer state, `in_flight` slots of saved values, workspace values and cotangent
        roots (not the CUDA backend's reduction buffer, which the executor adds). Weight
        gradients accumulate in the gemm (beta = 1), so there are no dW temporaries."""
        out = [b for n in self.params for b in (self.param_buffer(n), self.grad_buffer(n))]
        out += [self.optimizer_buffer(i, n) for n in self.params for i in range(optimizer_slots)]
        out += [self.slot_buffer(k, n) for k in range(in_flight) for n in self.saved]
        out += [self.work_buffer(n) for n in self.workspace]
        out += [self.cotangent_buffer(r) for r in self.roots]
        return tuple(out)


def lower(graph: Graph, *, output: str | None, input_grad: bool, recompute: bool) -> Lowered:
    """Lower a stage's graph (one input; labels on the last stage) for the executor."""
    (inp,) = [v.name for v in graph.inputs]
    steps = plan_steps(graph)
    params = tuple(v.name for v in graph.params)
    saved = saved_values(graph, recompute)
    work: list[str] = []
    for s in steps:
        for n in s.touched():
            if n not in saved and n not in params and n not in work:
                work.append(n)
    alias = grad_aliases(steps)
    uses: dict[str, int] = {}
    for s in steps:
        if s.kind == "matmul":
            uses[s.op.inputs[1]] = uses.get(s.op.inputs[1], 0) + 1
    return Lowered(
        graph=graph,
        input=inp,
        labels=tuple(v.name for v in graph.labels),
        output=output,
        input_grad=input_grad,
        recompute=recompute,
        steps=steps,
        params=params,
        saved=saved,
        workspace=tuple(work),
        aliases=MappingProxyType(alias),
        matmul_uses=MappingProxyType(uses),
    )
