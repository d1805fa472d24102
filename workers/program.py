"""The executor: runs a (sub)graph forward and backward with a backend's kernels, in place.

Design (departs from a plain interpreter, for speed and for exact memory accounting). What it
runs and which buffers exist come from graphpart.ir.lower, which the memory model also reads;
this module allocates those buffers lazily, in the order it first needs them:

- Buffers are allocated once and reused every step (`out=` everywhere). A tensor some op
  declares as saved for backward lives in a per-micro-batch *slot* (category "activation");
  slots are taken in forward and given back when that micro-batch's backward is done, and
  the number of slots a stage ever needs is the schedule's peak in-flight count. Tensors no
  backward reads live in one shared buffer ("workspace"), and so do the cotangents of
  intermediate values, which alias along an activation -> bias -> matmul chain.
- The stage input is copied into its slot (it is what the first matmul saves); the gradient of
  the stage input, sent to the previous stage, has its own buffer ("boundary").
- Which kernels run, fused how, on which buffers, is the op registry's (graphpart.ir.ops,
  `kernels`), resolved by the lowering; the kernels are the backend's table entries, looked up
  once here, with each operand's buffer lookup bound into a getter: the step loops dispatch by
  table and name no op (bias_add and its activation run fused; softmax cross-entropy writes its
  probabilities over the saved logits, the same bytes as declared).
- Per-step calls (the regulariser s = lambda/2 sum ||W||^2, `regularize`) run once per step,
  not per micro-batch: lambda W must be counted exactly once however the batch is split.
- With `recompute`, forward keeps only the stage input (and labels) per micro-batch and
  backward reruns the stage's forward into workspace buffers before differentiating.
- Backward is I then W (the lowering's `input_calls`, `weight_calls`): `backward` runs both
  on the shared buffers (with a `grad_hook`, data parallelism's overlap, in the graph's own
  order instead: each layer's gradients final as early as they can be); a zero-bubble
  schedule calls `backward_input` (I: what the previous stage waits for) and, later,
  `backward_weight` (W). Between them a micro-batch keeps its
  slot (the saved values W reads) and a *pending* slot, taken at I and given back at W, with
  the cotangents W reads (each layer's dz) and, under recompute, the values W reads; I writes
  them there directly (the same kernels, bound once more with those operands read from the
  slot), so the arithmetic is B's, bit for bit. Pending slots are allocated once, as many as
  the schedule's most micro-batches between I and W (ledger: "pendw[k]:...", "activation").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from graphpart.ir.graph import BATCH, Graph
from graphpart.ir.lower import BufferSpec, KernelCall, Lowered, lower
from graphpart.ir.sizes import flat_elements, nbytes
from graphpart.ir.split import split_last_weight
from workers.backends import Backend
from workers.bind import Run, compile_call
from workers.finals import Final, block_ends, finals, grad_order, row_blocks_of
from workers.ledger import Ledger


def pending_key(root: str) -> tuple[str, str]:
    """A pending slot's key for the cotangent buffer of `root` (values keep their names)."""
    return ("d", root)


class Program:
    """Forward/backward of one stage's graph for micro-batches of at most `max_rows` rows."""

    def __init__(
        self,
        graph: Graph,
        params: Mapping[str, np.ndarray],
        backend: Backend,
        max_rows: int,
        ledger: Ledger | None = None,
        output: str | None = None,
        recompute: bool = False,
        input_grad: bool = False,
        name: str = "",
        split_bytes: int = 0,
    ) -> None:
        self.graph = graph
        low = lower(graph, output=output, input_grad=input_grad, recompute=recompute)
        dtypes = {np.asarray(p).dtype for p in params.values()}
        self.dtype = next(iter(dtypes)) if dtypes else np.dtype(np.float64)
        # data parallelism: the last weight gradient in row blocks of >= split_bytes, each
        # all-reduced while the next computes (graphpart/ir/split.py)
        self.lowered = low = split_last_weight(low, row_blocks_of(low, split_bytes, self.dtype))
        self.bk = backend
        self.max_rows = int(max_rows)
        self.ledger = ledger if ledger is not None else Ledger(keep_events=False)
        self.recompute = recompute
        self.name = name
        self.input = low.input
        self.labels = list(low.labels)
        self.output = output  # boundary value sent to the next stage; None on the last stage
        self.input_grad = input_grad  # send dJ/d(input) back (every stage but the first)

        # the gradients: views of one buffer, in the order they become final (data parallelism
        # all-reduces that buffer in place, bucket by bucket: workers/buckets.py); the ledger
        # enters each parameter and its gradient in the lowering's order
        self.grad_order = grad_order(low)
        specs = [low.grad_buffer(w) for w in self.grad_order]
        self.flat_grads, views, self.grad_spans = self._flat_views(specs)
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        for w in low.params:
            self.params[w] = self._alloc(low.param_buffer(w))
            self.bk.from_host(np.asarray(params[w], dtype=self.dtype), self.params[w])
            spec = low.grad_buffer(w)
            self.ledger.add(spec.name, spec.category, spec.nbytes(0, self.dtype))
            self.grads[w] = views[self.grad_order.index(w)]

        if self.bk.needs_reduction:  # CUDA: the losses' and norms' float64 buffer
            red = BufferSpec("work:reduction", "workspace", (max(self.max_rows, 1024),))
            self.bk.reduction = self._alloc(red, dtype=np.float64)
        self.steps = low.steps
        self.saved = list(low.saved)
        self.fresh = dict.fromkeys(self.params, True)  # grad buffer holds no value yet this step
        self.slots: list[dict[str, Any]] = []
        self.free_slots: list[int] = []
        self.slot_of: dict[int, int] = {}
        self.rows_of: dict[int, int] = {}
        self.loss_sum = 0.0
        self._shared: dict[str, Any] = {}
        self._gbuf: dict[str, Any] = {}
        # the kernels and their operands, resolved once: (forward, loss?, backward calls)
        self._fwd = [(self._bind(s.forward), s.op.inputs[0] if s.loss else None) for s in low.steps]
        self._bwd = [self._bind(c) for c in (*low.input_calls, *low.weight_calls)]  # B = I, W
        # I and W apart: the cotangents W reads in the micro-batch's pending slot
        pend = {n: pending_key(r) for n, r in _cotangent_roots(low) if r in low.pending_grads}
        self._ical = [self._bind(c, pend) for c in low.input_calls]
        self._wcal = [self._bind(c, pend) for c in low.weight_calls]
        # per call: the parameters whose gradient it writes for the last time in a backward;
        # with a grad_hook, B runs the calls in the graph's order (each layer's W beside its I)
        natural = tuple(c for s in reversed(low.steps) for c in s.backward)
        self._nat = [self._bind(c) for c in natural]
        self._nat_done = finals(low, natural)
        self._wcal_done = finals(low, low.weight_calls)
        # called after each call of a backward (B or W) with the gradients it wrote for the
        # last time, as far as it did (Final), often none (data parallelism: the buckets they
        # complete may start, and those under way advance); None: no calls
        self.grad_hook: Callable[[tuple[Final, ...]], None] | None = None
        # where a gradient written in row blocks is final block by block: its elements at each
        # block's end but the last (the all-reduce's buckets may close there)
        self.block_ends: dict[str, tuple[int, ...]] = block_ends(low)
        self._per_step = [self._bind(c) for c in low.per_step]
        self._sends = input_grad and low.root(low.input) in low.roots
        self.pending: list[dict[Any, Any]] = []  # pending slots (allocated at first need)
        self.free_pending: list[int] = []
        self.pending_of: dict[int, int] = {}  # micro-batch -> its pending slot, from I to W
        self._joined: dict[int, dict[Any, Any]] = {}  # micro-batch -> its slot and pending slot

    # -- construction -------------------------------------------------------------------------
    def _alloc(self, spec: BufferSpec, zero: bool = False, dtype: Any = None) -> Any:
        """Allocate `spec` (its batch dimension `max_rows` rows) and enter it in the ledger."""
        shape = tuple(self.max_rows if d == BATCH else int(d) for d in spec.shape)
        dtype = spec.dtype(self.dtype) if dtype is None else np.dtype(dtype)
        a = self.bk.zeros(shape, dtype) if zero else self.bk.empty(shape, dtype)
        self.ledger.add(spec.name, spec.category, spec.nbytes(self.max_rows, dtype))
        return a

    def _flat_views(self, specs: list[BufferSpec]) -> tuple[Any, list[Any], list[int]]:
        """One zeroed buffer holding `specs` (no batch dimension) end to end at their aligned
        allocations' strides (each on a line; it takes what their ledger entries, the caller's,
        add up to), a view of it for each, and each one's stride in elements (the last one's to
        the end; the gaps hold zeros, which an all-reduce sums too)."""
        item = self.dtype.itemsize
        data = [nbytes(s.shape, 0, self.dtype) for s in specs]
        flat = self.bk.zeros((flat_elements(data, item),), self.dtype)
        views, strides, at = [], [], 0
        for spec in specs:
            shape = tuple(int(d) for d in spec.shape)
            views.append(flat[at : at + math.prod(shape)].reshape(shape))
            strides.append(min(spec.nbytes(0, self.dtype) // item, int(flat.size) - at))
            at += strides[-1]
        return flat, views, strides

    # -- buffers ------------------------------------------------------------------------------
    def _slot(self, mb: int) -> dict[str, Any]:
        if mb in self.slot_of:
            raise RuntimeError(f"{self.name}: forward of micro-batch {mb} twice before backward")
        if self.free_slots:
            k = self.free_slots.pop()
        else:
            k = len(self.slots)
            self.slots.append({n: self._alloc(self.lowered.slot_buffer(k, n)) for n in self.saved})
        self.slot_of[mb] = k
        return self.slots[k]

    def _value(self, slot: dict, name: str) -> Any:
        if name in slot:
            return slot[name]
        if name in self.params:
            return self.params[name]
        if name not in self._shared:
            self._shared[name] = self._alloc(self.lowered.work_buffer(name))
        return self._shared[name]

    def _grad(self, name: str) -> Any:
        root = self.lowered.root(name)
        if root not in self._gbuf:
            self._gbuf[root] = self._alloc(self.lowered.cotangent_buffer(root))
        return self._gbuf[root]

    def _cotangent(self, slot: dict, name: str) -> Any:
        """dJ/d(name): in the pending slot joined into `slot` where it lives there."""
        key = pending_key(self.lowered.root(name))
        return slot[key] if key in slot else self._grad(name)

    def _pending_slot(self, mb: int) -> dict[Any, Any]:
        """Take a pending slot for micro-batch `mb`; return it joined with its slot."""
        if mb in self.pending_of:
            raise RuntimeError(f"{self.name}: input gradient of micro-batch {mb} twice")
        if self.free_pending:
            k = self.free_pending.pop()
        else:
            k = len(self.pending)
            low = self.lowered
            buf = {
                pending_key(r): self._alloc(low.pending_grad_buffer(k, r))
                for r in low.pending_grads
            }
            buf.update({n: self._alloc(low.pending_value_buffer(k, n)) for n in low.pending_values})
            self.pending.append(buf)
        self.pending_of[mb] = k
        joined = {**self.slots[self.slot_of[mb]], **self.pending[k]}
        self._joined[mb] = joined
        return joined

    # -- kernel calls, bound once --------------------------------------------------------------
    def _bind(self, call: KernelCall, pending: Mapping[str, Any] | None = None) -> Run:
        return compile_call(call, self.bk.kernels[call.key], pending or {})

    # -- forward ------------------------------------------------------------------------------
    def forward(self, mb: int, x: Any, y: Any = None, scale: float = 1.0) -> Any:
        """Run micro-batch `mb`; return the boundary output (a view, valid until reused)."""
        n = int(x.shape[0])
        if n > self.max_rows:
            raise ValueError(
                f"{self.name}: micro-batch of {n} rows exceeds max_rows={self.max_rows}"
            )
        if self.labels and y is None:
            raise ValueError(f"{self.name}: the last stage needs labels for micro-batch {mb}")
        self.ledger.mark("F", str(mb))
        slot = self._slot(mb)
        self.rows_of[mb] = n
        self.bk.from_host(x, self._value(slot, self.input)[:n])
        if self.labels:
            self.bk.from_host(y, self._value(slot, self.labels[0])[:n])
        out = self._run_forward(slot, n, scale)
        self.ledger.mark("F_end", str(mb))
        return out

    def infer(self, x: Any) -> Any:
        """Forward without caching or loss (inference): the boundary output, or the logits o."""
        n = int(x.shape[0])
        if n > self.max_rows:
            raise ValueError(f"{self.name}: {n} rows exceed max_rows={self.max_rows}")
        slot = self._slot(-1)  # borrow a training slot: inference adds no memory of its own
        try:
            self.bk.from_host(x, self._value(slot, self.input)[:n])
            return self._run_forward(slot, n, 0.0, loss=False)
        finally:
            self.free_slots.append(self.slot_of.pop(-1))

    def _run_forward(self, slot: dict, n: int, scale: float, loss: bool = True) -> Any:
        for run, loss_input in self._fwd:
            if loss_input is None:
                run(self, slot, n, scale)
            elif loss:
                self.loss_sum += run(self, slot, n, scale)
            else:  # inference stops before the loss: its first input, the logits
                return self._value(slot, loss_input)[:n]
        return self._value(slot, self.output)[:n] if self.output is not None else None

    # -- backward -----------------------------------------------------------------------------
    def backward(self, mb: int, g: Any = None, scale: float = 1.0) -> Any:
        """Backward of micro-batch `mb` given dJ/d(output): I then W on the shared buffers;
        returns dJ/d(input) or None. With a `grad_hook` the calls run in the graph's own
        order instead, each step's W beside its I (W reads only cotangents its step's I or a
        later layer's wrote, I never a parameter's gradient: the same kernels on the same
        operands, bit for bit), so that the last layers' gradients are final first."""
        slot = self._backward_slot(mb, "backward")
        self.ledger.mark("B", str(mb))
        n = self.rows_of[mb]
        self._receive(slot, mb, n, g, scale)
        if self.grad_hook is None:
            for run in self._bwd:
                run(self, slot, n, scale)
        else:  # the last layers' gradients final first (data parallelism's overlap)
            _run_calls(self, self._nat, self._nat_done, slot, n, scale)
        din = self._grad(self.input)[:n] if self._sends else None
        self._release(mb)
        self.ledger.mark("B_end", str(mb))
        return din

    def backward_input(self, mb: int, g: Any = None, scale: float = 1.0) -> Any:
        """I of micro-batch `mb` given dJ/d(output): returns dJ/d(input) or None; keeps what
        its W reads (its slot, and a pending slot) until `backward_weight(mb)`."""
        self._backward_slot(mb, "input gradient")
        self.ledger.mark("I", str(mb))
        slot = self._pending_slot(mb)
        n = self.rows_of[mb]
        self._receive(slot, mb, n, g, scale)
        for run in self._ical:
            run(self, slot, n, scale)
        din = self._cotangent(slot, self.input)[:n] if self._sends else None
        self.ledger.mark("I_end", str(mb))
        return din

    def backward_weight(self, mb: int, scale: float = 1.0) -> None:
        """W of micro-batch `mb` (after its `backward_input`): its weight gradients, added to
        this step's; frees its slot and pending slot. (`scale` is not read: the call takes
        it so that, as every action, it reads the step's input.)"""
        if mb not in self.pending_of:
            raise RuntimeError(
                f"{self.name}: weight gradient of micro-batch {mb} before its input gradient"
            )
        self.ledger.mark("W", str(mb))
        slot = self._joined.pop(mb)
        n = self.rows_of[mb]
        _run_calls(self, self._wcal, self._wcal_done, slot, n, scale)
        self.free_pending.append(self.pending_of.pop(mb))
        self._release(mb)
        self.ledger.mark("W_end", str(mb))

    def _backward_slot(self, mb: int, what: str) -> dict[str, Any]:
        if mb not in self.slot_of:
            raise RuntimeError(f"{self.name}: {what} of micro-batch {mb} before its forward")
        if mb in self.pending_of:
            raise RuntimeError(f"{self.name}: {what} of micro-batch {mb} after its input gradient")
        return self.slots[self.slot_of[mb]]

    def _receive(self, slot: dict, mb: int, n: int, g: Any, scale: float) -> None:
        """Before a backward: rebuild the forward (recompute), copy the received cotangent
        into this stage's own buffer."""
        if self.recompute:  # everything but input and labels lives in workspace: rebuild it
            saved_loss = self.loss_sum
            self._run_forward(slot, n, scale)
            self.loss_sum = saved_loss
        if self.output is not None:  # the received cotangent, copied into our boundary buffer
            if g is None:
                raise ValueError(
                    f"{self.name}: backward of micro-batch {mb} needs dJ/d{self.output}"
                )
            self.bk.from_host(g, self._cotangent(slot, self.output)[:n])

    def _release(self, mb: int) -> None:
        self.free_slots.append(self.slot_of.pop(mb))
        del self.rows_of[mb]

    # -- per step -----------------------------------------------------------------------------
    def regularize(self) -> float:
        """Run the per-step calls (lambda W added to each regularised weight's gradient) once
        per step; return their part of the objective, s."""
        s = 0.0
        for run in self._per_step:
            s += run(self, {}, 0, 0.0)
        return s

    def zero_grad(self) -> None:
        """Start a new step: the next gradient written to each buffer overwrites it."""
        for name in self.fresh:
            self.fresh[name] = True
        self.loss_sum = 0.0

    def finish_grads(self) -> None:
        """Zero the gradient of any parameter that received none this step (e.g. M=0 paths)."""
        for name, fresh in self.fresh.items():
            if fresh:
                self.bk.flat(self.grads[name])[:] = 0
                self.fresh[name] = False

    def get_params(self, copy: bool = True) -> dict[str, np.ndarray]:
        """The parameters on the host: copies, or (copy=False, for a caller that serialises
        them at once) the live arrays where the backend's are host arrays."""
        take = np.array if copy else np.asarray
        return {k: take(self.bk.to_host(v)) for k, v in self.params.items()}

    def get_grads(self) -> dict[str, np.ndarray]:
        return {k: np.array(self.bk.to_host(v)) for k, v in self.grads.items()}

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        for k, v in params.items():
            self.bk.from_host(np.asarray(v, dtype=self.dtype), self.params[k])


def _run_calls(
    p: Program, calls: list[Run], done: list[tuple[Final, ...]], slot: dict, n: int, sc: float
) -> None:
    """Run a backward's calls; with a grad_hook, tell it after each call the gradients that
    call finished."""
    hook = p.grad_hook
    if hook is None:
        for run in calls:
            run(p, slot, n, sc)
        return
    for run, names in zip(calls, done, strict=True):
        run(p, slot, n, sc)
        hook(names)


def _cotangent_roots(low: Lowered) -> list[tuple[str, str]]:
    """(cotangent name, its root) for every cotangent a backward call names."""
    names = dict.fromkeys(n for c in (*low.input_calls, *low.weight_calls) for n in c.cotangents())
    return [(n, low.root(n)) for n in names]
