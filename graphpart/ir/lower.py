"""Lowering: a stage's graph to the executor's steps, saved values and ledger-named buffers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from graphpart.errors import GraphError
from graphpart.ir.calls import Call
from graphpart.ir.graph import BATCH, Graph, Op, Shape
from graphpart.ir.ops import get
from graphpart.ir.sizes import allocated, nbytes

# The memory categories every buffer belongs to: the ledger's, the memory model's, the reports'.
CATEGORIES: tuple[str, ...] = (
    "parameter",
    "gradient",
    "optimizer",
    "activation",
    "boundary",
    "workspace",
)
LABEL_DTYPE = np.dtype(np.int64)  # class labels (B,) are int64; mse targets take the model dtype

# What an operand is, for the executor: a value's buffer (the micro-batch's rows), a parameter,
# a cotangent's buffer, a parameter's gradient, a constant, the micro-batch's loss scale, or the
# written gradient's state ("beta": 0.0 / 1.0, "accumulate": False / True, by whether it
# already holds a value this step).
OperandKind = Literal[
    "value", "param", "grad", "param_grad", "const", "scale", "beta", "accumulate"
]


@dataclass(frozen=True)
class Operand:
    kind: OperandKind
    name: str = ""  # the value (or parameter) for value, param, grad, param_grad, beta, accumulate
    const: float | int | None = None


@dataclass(frozen=True)
class KernelCall:
    """A Call with its roles resolved for one op of one stage."""

    key: str
    operands: tuple[Operand, ...]
    param: str | None = None  # the parameter whose gradient it writes (then no longer fresh)
    weight: bool = False  # a weight-gradient call (the op's `weight_grads`): runs in W, not I
    splits: tuple[int, ...] = ()  # operands sliced on their last axis with a row block (Call)
    rows: tuple[int, int] | None = None  # a row block [a, b) of the gradient it writes
    last: bool = True  # the call's last block: after it the gradient is no longer fresh

    def values(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.operands if o.kind == "value")

    def cotangents(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.operands if o.kind == "grad")


def _operand(graph: Graph, ops: tuple[Op, ...], role: str, each: str | None) -> Operand:
    """`role` (graphpart/ir/calls.py) of ops[0], or of ops[1] for a "next." role."""
    op = ops[0]
    if role.startswith("next."):
        op, role = ops[1], role.removeprefix("next.")
    if role == "scale":
        return Operand("scale")
    if role == "code":
        return Operand("const", const=get(op.op).kernels.code)
    if role.startswith("attr."):
        return Operand("const", const=float(op.attr(role.removeprefix("attr."), 0.0)))
    base = role.removeprefix("d_")
    if base == "out":
        name = op.output
    elif base == "in*" and each is not None:
        name = each
    elif base[:2] == "in" and base[2:].isdigit() and int(base[2:]) < len(op.inputs):
        name = op.inputs[int(base[2:])]
    else:
        raise GraphError(f"op {op.op!r} ({op.name}): its kernels name an unknown operand {role!r}")
    param = graph.var(name).role == "param"
    if role.startswith("d_"):
        return Operand("param_grad" if param else "grad", name)
    return Operand("param" if param else "value", name)


def _bind(
    graph: Graph, call: Call, ops: tuple[Op, ...], each: str | None = None, weight: bool = False
) -> KernelCall:
    """Resolve a Call's roles for `ops` (one op, or an op and the one fused after it)."""
    written = call.writes()
    dst = None if written is None else _operand(graph, ops, written, each)
    param = dst.name if dst is not None and dst.kind == "param_grad" else None
    operands = []
    for role in call.args:
        if role in ("beta", "accumulate"):
            if param is None:
                raise GraphError(f"kernel {call.key!r}: {role!r} without a parameter gradient")
            operands.append(Operand(role, param))
        else:
            operands.append(_operand(graph, ops, role, each))
    splits = tuple(i for i, role in enumerate(call.args) if role in call.splits)
    return KernelCall(call.key, tuple(operands), param, weight, splits)


@dataclass(frozen=True)
class Step:
    """One forward kernel call (an op, or an op and the one fused after it) and its backward."""

    ops: tuple[Op, ...]
    forward: KernelCall
    backward: tuple[KernelCall, ...]  # op by op in reverse: its weight, then input gradients
    loss: bool = False  # the forward returns the (scaled) loss

    @property
    def op(self) -> Op:
        return self.ops[0]

    def touched(self) -> tuple[str, ...]:
        """Values the forward pass reads or writes (parameters and a loss's scalar excluded)."""
        return tuple(dict.fromkeys(self.forward.values()))


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
        """What the buffer's allocation takes (its data aligned: `allocated`)."""
        return allocated(nbytes(self.shape, rows, self.dtype(model)))


def plan_steps(graph: Graph, wants: Callable[[str], bool] = lambda name: True) -> tuple[Step, ...]:
    """The tensor ops as kernel calls (the registry's `kernels`): an op whose only consumer is
    the op right after it runs fused with it where it declares a kernel for the pair (bias_add
    then its activation). A step's backward lists, op by op in reverse, the weight-gradient
    calls, then the input-gradient calls whose cotangent `wants(value)` (the executor runs the
    input-gradient calls of every step first, then the weight-gradient calls: I, then W).
    Scalar ops (l2, add) are left out."""
    ops = [o for o in graph.ops if get(o.op).kind != "scalar"]
    steps: list[Step] = []
    i = 0
    while i < len(ops):
        o = ops[i]
        k = get(o.op).kernels
        if k.forward is None:
            raise NotImplementedError(f"the executor cannot run op {o.op!r} ({o})")
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        fused = None
        if nxt is not None and nxt.inputs == (o.output,) and len(graph.consumers(o.output)) == 1:
            fused = k.fuses.get(nxt.op)
        group = (o,) if fused is None or nxt is None else (o, nxt)
        back: list[KernelCall] = []
        for op in reversed(group):
            ok = get(op.op).kernels
            for c in ok.weight_grads:
                back.append(_bind(graph, c, (op,), weight=True))
            for c in ok.input_grads:
                written = c.writes()
                if written is None or wants(_operand(graph, (op,), written, None).name):
                    back.append(_bind(graph, c, (op,)))
        forward = _bind(graph, k.forward if fused is None else fused, group)
        steps.append(Step(group, forward, tuple(back), get(o.op).kind == "loss"))
        i += len(group)
    return tuple(steps)


def step_calls(graph: Graph) -> tuple[KernelCall, ...]:
    """The calls made once per step (the regulariser's lambda W and its value), one per input
    of each op with a `step` kernel that its `enabled_by` attribute does not switch off."""
    out: list[KernelCall] = []
    for o in graph.ops:
        k = get(o.op).kernels
        if k.step is None or (k.enabled_by and float(o.attr(k.enabled_by, 0.0)) == 0.0):
            continue
        out += [_bind(graph, k.step, (o,), each=w) for w in o.inputs]
    return tuple(out)


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
    """Cotangents computed in place (ops declaring `in_place`): dz = dh through an activation,
    dm = dz through a bias. Maps a value to the root value whose cotangent buffer it shares."""
    alias: dict[str, str] = {}
    for s in steps:
        for op in reversed(s.ops):
            if get(op.op).kernels.in_place:
                alias[op.inputs[0]] = alias.get(op.output, op.output)
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

    Backward is two lists of calls: `input_calls` (I: everything up to the stage input's
    cotangent, which the previous stage waits for) and `weight_calls` (W: the parameters'
    gradients). A whole backward (B) runs I then W on the shared buffers. Where W is deferred
    (a zero-bubble schedule), what W reads must outlive the micro-batch's I: its saved values
    stay in the micro-batch's slot until W, and the `pending_grads` (cotangent roots W reads:
    each matmul's and bias's dz) and `pending_values` (values W reads that are not saved: the
    matmuls' inputs under recompute) live in a per-micro-batch *pending* slot, taken at I and
    given back at W, instead of in the shared buffers.
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
    per_step: tuple[KernelCall, ...]  # once per step, not per micro-batch (the regulariser)

    @property
    def loss_step(self) -> Step | None:
        return next((s for s in self.steps if s.loss), None)

    def root(self, name: str) -> str:
        """The value whose cotangent buffer holds dJ/d(name)."""
        return self.aliases.get(name, name)

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
            for call in s.backward:
                for name in call.cotangents():
                    need(name)
        return tuple(roots)

    @property
    def input_calls(self) -> tuple[KernelCall, ...]:
        """I: the input-gradient calls of every step, in the order they run."""
        return tuple(c for s in reversed(self.steps) for c in s.backward if not c.weight)

    @property
    def weight_calls(self) -> tuple[KernelCall, ...]:
        """W: the weight-gradient calls of every step, in the order they run."""
        return tuple(c for s in reversed(self.steps) for c in s.backward if c.weight)

    @property
    def pending_grads(self) -> tuple[str, ...]:
        """Cotangent roots W reads: held per micro-batch from its I to its W when W is
        deferred."""
        names = (self.root(n) for c in self.weight_calls for n in c.cotangents())
        return tuple(dict.fromkeys(names))

    @property
    def pending_values(self) -> tuple[str, ...]:
        """Values W reads that no slot keeps (recompute: the matmuls' inputs but the stage's),
        held per micro-batch from its I to its W when W is deferred."""
        names = (n for c in self.weight_calls for n in c.values() if n not in self.saved)
        return tuple(dict.fromkeys(names))

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

    def pending_grad_buffer(self, slot: int, root: str) -> BufferSpec:
        return BufferSpec(f"pendw[{slot}]:dgrad:{root}", "activation", self.graph.var(root).shape)

    def pending_value_buffer(self, slot: int, name: str) -> BufferSpec:
        v = self.graph.var(name)
        return BufferSpec(f"pendw[{slot}]:{name}", "activation", v.shape, self.is_label(name))

    def pending_buffers(self, slot: int) -> tuple[BufferSpec, ...]:
        """Pending slot `slot`: what a micro-batch's deferred W reads, beyond its saved values."""
        grads = tuple(self.pending_grad_buffer(slot, r) for r in self.pending_grads)
        return grads + tuple(self.pending_value_buffer(slot, n) for n in self.pending_values)

    def buffers(
        self, *, in_flight: int, optimizer_slots: int, pending: int = 0, whole: bool = True
    ) -> tuple[BufferSpec, ...]:
        """Every buffer a stage worker allocates over a run: parameters and their gradients,
        optimizer state, `in_flight` slots of saved values, workspace values and cotangent
        roots (not the CUDA backend's reduction buffer, which the executor adds). Weight
        gradients accumulate in the gemm (beta = 1), so there are no dW temporaries.

        A schedule that splits backwards adds `pending` pending slots (its most micro-batches
        between I and W at once, graphpart.plan.schedule.peak_pending); the cotangent roots W
        reads are shared buffers only if the stage also runs `whole` backwards (B)."""
        out = [b for n in self.params for b in (self.param_buffer(n), self.grad_buffer(n))]
        out += [self.optimizer_buffer(i, n) for n in self.params for i in range(optimizer_slots)]
        out += [self.slot_buffer(k, n) for k in range(in_flight) for n in self.saved]
        out += [self.work_buffer(n) for n in self.workspace]
        out += [b for k in range(pending) for b in self.pending_buffers(k)]
        skip = () if whole or not pending else self.pending_grads
        out += [self.cotangent_buffer(r) for r in self.roots if r not in skip]
        return tuple(out)


@lru_cache(maxsize=256)
def lower(graph: Graph, *, output: str | None, input_grad: bool, recompute: bool) -> Lowered:
    """Lower a stage's graph (one input; labels on the last stage) for the executor. Kept
    (the result is immutable): the planner lowers the same stages for every candidate."""
    (inp,) = [v.name for v in graph.inputs]
    steps = plan_steps(graph, lambda name: name != inp or input_grad)
    params = tuple(v.name for v in graph.params)
    saved = saved_values(graph, recompute)
    work: list[str] = []
    for s in steps:
        for n in s.touched():
            if n not in saved and n not in params and n not in work:
                work.append(n)
    alias = grad_aliases(steps)
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
        per_step=step_calls(graph),
    )
