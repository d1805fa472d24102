"""Contract of workers/program.py beyond what the stage and lowering tests check.

A Program binds its kernel calls once, at build time (the backend's table entries and one
getter per operand), without capturing itself: a Program and its bound calls form no
reference cycle, so dropping it frees its buffers at once, with the garbage collector off.

Backward split in two: `backward` (B) runs the input-gradient calls then the weight-gradient
calls, and gives bit for bit what the op-by-op order gave, and what `backward_input` (I)
followed later by `backward_weight` (W) gives. I keeps what W reads in a pending slot (ledger
"pendw[k]:...", category activation), given back at W and reused; a stage allocates as many
as were ever pending at once. I before F, W before I, a second I, or B after I raise
RuntimeError naming the micro-batch.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from graphpart.ir import mlp
from graphpart.params import init_params
from graphpart.plan.partition import partition
from workers.backends import CpuBackend
from workers.ledger import Ledger
from workers.program import Program


def test_a_dropped_program_is_freed_without_the_garbage_collector():
    g = mlp([5, 7, 3], activation="tanh", bias=True, weight_decay=0.1)
    prog = Program(g, init_params(g, seed=1, dtype="float64"), CpuBackend(), 8)
    prog.forward(0, np.ones((4, 5)), np.array([0, 1, 2, 0]), 0.25)
    prog.backward(0, None, 0.25)
    assert prog.regularize() > 0.0
    ref = weakref.ref(prog)
    gc.disable()
    try:
        del prog
        assert ref() is None
    finally:
        gc.enable()


def _stage_program(recompute=False, **kw):
    """The middle stage of a 3-stage tanh MLP (it receives and sends gradients)."""
    g = mlp([5, 7, 6, 4, 3], activation="tanh", bias=True, weight_decay=0.1)
    st = partition(g, 3, "uniform").stages[1]
    params = init_params(g, seed=1, dtype="float64")
    prog = Program(
        st.graph,
        {p: params[p] for p in st.params},
        CpuBackend(),
        4,
        output=st.output,
        input_grad=True,
        recompute=recompute,
        **kw,
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, st.graph.var(prog.input).shape[1]))
    dy = rng.standard_normal((4, st.graph.var(st.output).shape[1]))
    return prog, x, dy


@pytest.mark.parametrize("recompute", [False, True])
def test_whole_backward_is_i_then_w_and_the_op_by_op_order_bit_for_bit(recompute):
    """B (the I calls, then the W calls) gives the input gradient and weight gradients of the
    op-by-op order (each op's weight, then input gradient) and of I then a later W, bit for
    bit, over two accumulating micro-batches."""
    results = []
    for mode in ("whole", "op-by-op", "split"):
        prog, x, dy = _stage_program(recompute)
        if mode == "op-by-op":
            steps = reversed(prog.lowered.steps)
            prog._bwd = [prog._bind(c) for s in steps for c in s.backward]
        dins = []
        for mb in (0, 1):
            prog.forward(mb, x * (mb + 1), None, 0.25)
        for mb in (0, 1):
            if mode == "split":
                dins.append(prog.backward_input(mb, dy * (mb + 1), 0.25).copy())
            else:
                dins.append(prog.backward(mb, dy * (mb + 1), 0.25).copy())
        if mode == "split":
            for mb in (0, 1):
                prog.backward_weight(mb, 0.25)
        results.append((dins, prog.get_grads()))
    (d0, g0), *rest = results
    for d, gr in rest:
        for a, b in zip(d0, d, strict=True):
            np.testing.assert_array_equal(a, b)
        for name in g0:
            np.testing.assert_array_equal(g0[name], gr[name], err_msg=name)


def test_split_backwards_are_checked_in_order():
    prog, x, dy = _stage_program()
    with pytest.raises(RuntimeError, match="input gradient of micro-batch 0 before its forward"):
        prog.backward_input(0, dy)
    prog.forward(0, x)
    with pytest.raises(RuntimeError, match="weight gradient of micro-batch 0 before its input"):
        prog.backward_weight(0)
    prog.backward_input(0, dy)
    with pytest.raises(RuntimeError, match="input gradient of micro-batch 0 after its input"):
        prog.backward_input(0, dy)
    with pytest.raises(RuntimeError, match="backward of micro-batch 0 after its input"):
        prog.backward(0, dy)
    prog.backward_weight(0)
    assert not prog.slot_of and not prog.pending_of


def test_pending_slots_are_taken_at_i_given_back_at_w_and_reused():
    """A micro-batch's pending slot (ledger "pendw[k]:...", category activation) holds the
    cotangents its W reads (each layer's dz, here the received one too), taken at its I and
    given back at its W; a stage allocates as many as were ever pending at once."""
    ledger = Ledger(keep_events=False)
    prog, x, dy = _stage_program(ledger=ledger)
    low = prog.lowered
    assert low.root(low.output) in low.pending_grads and not low.pending_values
    for mb in (0, 1, 2):
        prog.forward(mb, x)
    prog.backward_input(0, dy)
    prog.backward_input(1, dy)
    prog.backward_weight(0)
    prog.backward_input(2, dy)  # reuses micro-batch 0's pending slot
    prog.backward_weight(2)
    prog.backward_weight(1)
    assert len(prog.pending) == 2 and len(prog.slots) == 3
    pend = {n: e for n, e in ledger.entries.items() if n.startswith("pendw[")}
    want = {b.name for k in (0, 1) for b in low.pending_buffers(k)}
    assert set(pend) == want and {e.category for e in pend.values()} == {"activation"}
    # the received cotangent lives only in the pending slots: no shared boundary buffer for it
    assert f"dgrad:{low.root(low.output)}" not in ledger.entries
