"""Contract of the lowering (graphpart/ir/lower.py): one step plan for the executor and the model.

lower(graph, output=, input_grad=, recompute=) turns a stage's graph into kernel steps, each
the calls the op registry declares (graphpart.ir.ops `kernels`) with their roles resolved to
the stage's values: one step per tensor op, except that a bias_add whose only consumer is the
activation right after it is one step with the fused kernel; scalar ops (l2, add) are not
steps, and the regulariser's calls run once per step (`per_step`, none when lambda is 0).
Backward runs per op, in reverse, its weight-gradient then its input-gradient calls, without
the stage input's when it is not sent; `input_calls` (I) and `weight_calls` (W) are those
calls apart, and W reads `pending_grads` (each layer's dz root) and, under recompute,
`pending_values`. `saved` is what some VJP reads
(parameters excluded), with recompute only the stage input and labels; `workspace` is every
other non-parameter value the forward touches; cotangents share buffers along `aliases`
(dm = dz = dh), resolved to their root even through unfused chains; dW temporaries exist for
weights accumulated more than once a step. Lowered.buffers names every buffer exactly as
workers/program.py enters it in its ledger, with the same category and bytes, and in the
order it allocates them when micro-batches run one at a time, with B or with I and W apart
(then `pending` pending slots, and the shared dz buffers only where B runs). The activation
codes are the registry's (graphpart.ir.ops.ACT_CODE) and the kernels' constants; CATEGORIES
is the one declaration the ledger and the memory model use. split_last_weight(low, k)
(graphpart/ir/split.py) runs the last
weight-gradient call (a call declaring `splits`) as k calls over contiguous row blocks of its
gradient, only the last clearing its freshness, with everything else (and the buffers) as
before (a split lowering it leaves as it is); row_blocks refuses a count outside 1..rows,
naming it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from graphpart.ir import BATCH, Graph, Op, Var, mlp
from graphpart.ir import lower as lw
from graphpart.ir.calls import Kernels
from graphpart.ir.ops import ACT_CODE, REGISTRY
from graphpart.ir.split import row_blocks, split_last_weight
from graphpart.plan import memory
from graphpart.plan.partition import partition
from workers import ledger as wledger
from workers.backends import get_backend
from workers.kernels import cpu
from workers.ledger import Ledger
from workers.program import Program

ROWS = 5


def kinds(low: lw.Lowered) -> list[str]:
    """The ops of each step, "+"-joined when fused."""
    return ["+".join(o.op for o in s.ops) for s in low.steps]


def keys(calls) -> list[str]:
    return [c.key for c in calls]


def whole(graph: Graph, recompute: bool = False) -> lw.Lowered:
    return lw.lower(graph, output=None, input_grad=False, recompute=recompute)


def shared_weight_graph() -> Graph:
    """x -> W -> relu -> W -> tanh -> tanh -> o, mse: one weight read by two matmuls, and two
    activations in a row (the second is not fused, so its cotangent chain is dm -> dh -> dg)."""
    v = [
        Var("x", "input", (BATCH, 4)),
        Var("W", "param", (4, 4)),
        Var("b", "param", (4,)),
        Var("m1", "value", (BATCH, 4)),
        Var("h1", "value", (BATCH, 4)),
        Var("m2", "value", (BATCH, 4)),
        Var("z2", "value", (BATCH, 4)),
        Var("h2", "value", (BATCH, 4)),
        Var("o", "value", (BATCH, 4)),
        Var("y", "label", (BATCH, 4)),
        Var("L", "value", ()),
    ]
    ops = [
        Op("mm1", "matmul", ("x", "W"), "m1"),
        Op("act1", "relu", ("m1",), "h1"),
        Op("mm2", "matmul", ("h1", "W"), "m2"),
        Op("bias2", "bias_add", ("m2", "b"), "z2"),
        Op("act2", "tanh", ("z2",), "h2"),
        Op("act3", "tanh", ("h2",), "o"),
        Op("loss", "mse", ("o", "y"), "L"),
    ]
    return Graph(tuple(v), tuple(ops), output="L", loss="L").validate()


# -- constants -------------------------------------------------------------------------------
def test_activation_codes_are_the_registrys_and_the_kernels():
    assert sorted(ACT_CODE.values()) == list(range(len(ACT_CODE)))
    assert cpu.ACTIVATIONS == ACT_CODE
    names = {"identity": cpu.IDENTITY, "relu": cpu.RELU, "sigmoid": cpu.SIGMOID, "tanh": cpu.TANH}
    assert names == ACT_CODE
    assert all(REGISTRY[a].kernels.code == c for a, c in ACT_CODE.items())


def test_one_category_declaration():
    assert wledger.CATEGORIES is lw.CATEGORIES and memory.CATEGORIES is lw.CATEGORIES
    with pytest.raises(ValueError, match="category 'cache'"):
        Ledger().add("x", "cache", 8)


# -- steps -----------------------------------------------------------------------------------
def test_bias_and_activation_fuse():
    low = whole(mlp([3, 4, 5, 2], activation="sigmoid", bias=True, weight_decay=0.1))
    assert kinds(low) == [
        "matmul",
        "bias_add+sigmoid",
        "matmul",
        "bias_add+sigmoid",
        "matmul",
        "bias_add",
        "cross_entropy",
    ]
    fused = low.steps[1]
    assert fused.forward.key == "bias_act_forward"
    ops = [(o.kind, o.name, o.const) for o in fused.forward.operands]
    assert ops == [
        ("value", "m1", None),
        ("param", "b1", None),
        ("value", "z1", None),
        ("value", "h1", None),
        ("const", "", ACT_CODE["sigmoid"]),
    ]
    assert keys(fused.backward) == ["act_backward", "sum_rows"]  # the activation's first
    assert fused.backward[1].param == "b1" and fused.backward[0].param is None
    assert fused.touched() == ("m1", "z1", "h1")  # parameters are not workspace
    assert low.steps[-1].touched() == ("o", "y")  # the loss's scalar output is not a buffer
    assert low.loss_step is low.steps[-1] and low.steps[-1].loss
    assert keys(low.per_step) == ["weight_decay"] * 3
    assert [c.param for c in low.per_step] == ["W1", "W2", "W3"]
    assert whole(mlp([3, 4, 2], weight_decay=0.0)).per_step == ()  # lambda 0: no calls


def test_steps_without_bias_and_unfused_chains():
    low = whole(mlp([3, 4, 2], activation="tanh"))
    assert kinds(low) == ["matmul", "tanh", "matmul", "cross_entropy"]
    assert keys(low.steps[1].backward) == ["act_backward"]
    assert keys(low.steps[0].backward) == ["matmul_tn"]  # no dJ/dx on a first stage
    assert keys(low.steps[2].backward) == ["matmul_tn", "matmul_nn"]
    sent = lw.lower(low.graph, output=None, input_grad=True, recompute=False)
    assert keys(sent.steps[0].backward) == ["matmul_tn", "matmul_nn"]
    assert kinds(whole(shared_weight_graph())) == [
        "matmul",
        "relu",
        "matmul",
        "bias_add+tanh",
        "tanh",
        "mse",
    ]


def test_an_op_without_kernels_is_refused(monkeypatch):
    graph = mlp([3, 4, 2], activation="relu")
    monkeypatch.setitem(REGISTRY, "relu", replace(REGISTRY["relu"], kernels=Kernels()))
    with pytest.raises(NotImplementedError, match="cannot run op 'relu'"):
        lw.plan_steps(graph)


# -- saved values and workspace --------------------------------------------------------------
def test_saved_values_with_and_without_recompute():
    g = mlp([3, 4, 5, 2], bias=True)
    low = whole(g)
    assert low.saved == ("x", "h1", "h2", "o", "y")  # matmul inputs, activation outputs, loss
    assert low.workspace == ("m1", "z1", "m2", "z2", "m3")
    assert low.params == ("W1", "b1", "W2", "b2", "W3", "b3")
    rc = whole(g, recompute=True)
    assert rc.saved == ("x", "y")
    assert rc.workspace == ("m1", "z1", "h1", "m2", "z2", "h2", "m3", "o")
    assert memory.saved_values(g) == list(low.saved)
    assert memory.saved_values(g, recompute=True) == ["x", "y"]


def test_labels_take_the_label_dtype():
    low = whole(mlp([3, 2]))
    assert low.slot_buffer(0, "y").dtype("float32") == lw.LABEL_DTYPE
    assert low.slot_buffer(0, "x").dtype("float32") == np.float32
    mse = whole(mlp([3, 2], loss="mse"))
    assert mse.slot_buffer(0, "y").dtype("float64") == np.float64  # mse targets are floats


# -- cotangents ------------------------------------------------------------------------------
def test_aliases_and_roots():
    low = whole(mlp([3, 4, 5, 2], bias=True))
    assert dict(low.aliases) == {"z1": "h1", "m1": "h1", "z2": "h2", "m2": "h2", "m3": "o"}
    assert low.root("m2") == "h2" and low.root("h2") == "h2" and low.root("x") == "x"
    assert low.roots == ("o", "h2", "h1")  # no dJ/dx on a first stage
    sent = lw.lower(low.graph, output=None, input_grad=True, recompute=False)
    assert sent.roots == ("o", "h2", "h1", "x")
    assert sent.cotangent_buffer("x").category == "boundary"
    assert sent.cotangent_buffer("h1").category == "workspace"


def test_unfused_chain_resolves_to_its_root():
    low = whole(shared_weight_graph())
    assert low.root("m2") == low.root("z2") == low.root("h2") == "o"
    assert low.root("m1") == "h1"
    assert low.roots == ("o", "h1")


def test_boundary_cotangents_of_a_middle_stage():
    plan = partition(mlp([3, 4, 5, 6, 2], bias=True), 3, "uniform")
    st = plan.stages[1]
    low = lw.lower(st.graph, output=st.output, input_grad=True, recompute=False)
    assert low.input == st.input and low.labels == ()
    assert low.roots[0] == st.output and low.roots[-1] == st.input
    cats = {r: low.cotangent_buffer(r).category for r in low.roots}
    assert {r for r, c in cats.items() if c == "boundary"} == {st.input, st.output}


def test_weight_gradients_accumulate_without_temporaries():
    """Several micro-batches (or a weight read by two matmuls) accumulate dW in the gemm
    itself: the lowering allocates no dW temporary, whatever the micro-batch count."""
    low = whole(mlp([3, 4, 4, 2], bias=True))
    assert not any("tmp" in b.name for b in low.buffers(in_flight=3, optimizer_slots=2))
    shared = whole(shared_weight_graph())
    writes = [c.param for s in shared.steps for c in s.backward if c.param is not None]
    assert sorted(writes) == ["W", "W", "b"]  # W's second write accumulates (beta = 1)


# -- the buffers against a Program's ledger --------------------------------------------------
def run_program(
    low: lw.Lowered, *, microbatches: int, one_at_a_time: bool, dtype=np.float64, split=False
):
    g = low.graph
    rng = np.random.default_rng(0)
    params = {v.name: (0.3 * rng.standard_normal(v.shape)).astype(dtype) for v in g.params}
    prog = Program(
        g,
        params,
        get_backend("cpu"),
        ROWS,
        Ledger(keep_events=False),
        output=low.output,
        recompute=low.recompute,
        input_grad=low.input_grad,
    )
    x = rng.standard_normal(g.var(low.input).concrete_shape(ROWS)).astype(dtype)
    y = None
    if low.labels:
        lab = g.var(low.labels[0])
        y = (
            rng.integers(0, 2, ROWS)
            if low.is_label(lab.name)
            else rng.standard_normal(lab.concrete_shape(ROWS)).astype(dtype)
        )
    dy = None if low.output is None else np.ones(g.var(low.output).concrete_shape(ROWS), dtype)
    kinds = "FIW" if split else "FB"
    order = [(m, k) for k in kinds for m in range(microbatches)]
    if one_at_a_time:
        order = [(m, k) for m in range(microbatches) for k in kinds]
    for m, k in order:
        if k == "F":
            prog.forward(m, x, y, 0.5)
        elif k == "B":
            prog.backward(m, dy, 0.5)
        elif k == "I":
            prog.backward_input(m, dy, 0.5)
        else:
            prog.backward_weight(m, 0.5)
    prog.regularize()
    prog.finish_grads()
    return prog


CASES = {
    "whole-bias": lambda: (mlp([3, 4, 5, 2], bias=True), None, None),
    "mse-no-bias": lambda: (mlp([3, 4, 5, 2], activation="tanh", loss="mse"), None, None),
    "shared-weight": lambda: (shared_weight_graph(), None, None),
    "middle-stage": lambda: (mlp([3, 4, 5, 6, 2], bias=True), 3, 1),
    "last-stage": lambda: (mlp([3, 4, 5, 6, 2], activation="sigmoid"), 2, 1),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("microbatches", [1, 3])
@pytest.mark.parametrize("split", [False, True], ids=["B", "I+W"])
def test_buffers_are_the_program_ledger(case, recompute, microbatches, split):
    graph, k, index = CASES[case]()
    output, input_grad = None, False
    if k is not None:
        st = partition(graph, k, "uniform").stages[index]
        graph, output, input_grad = st.graph, st.output, True
    low = lw.lower(graph, output=output, input_grad=input_grad, recompute=recompute)
    for one_at_a_time in (True, False):
        prog = run_program(low, microbatches=microbatches, one_at_a_time=one_at_a_time, split=split)
        in_flight = 1 if one_at_a_time else microbatches
        pending = in_flight if split else 0
        assert len(prog.slots) == in_flight and len(prog.pending) == pending
        specs = low.buffers(
            in_flight=in_flight, optimizer_slots=0, pending=pending, whole=not split
        )
        want = {b.name: (b.category, b.nbytes(ROWS, np.float64)) for b in specs}
        assert prog.ledger.snapshot().entries == want
        if one_at_a_time:  # the executor allocates lazily, in the lowering's order
            assert list(prog.ledger.entries) == [b.name for b in specs]
        assert all(b.category in lw.CATEGORIES for b in specs)
        bufs = memory.stage_buffers(
            graph,
            output=output,
            input_grad=input_grad,
            rows=ROWS,
            in_flight=in_flight,
            optimizer_slots=0,
            dtype="float64",
            recompute=recompute,
            pending=pending,
            whole=not split,
        )
        assert {b.name: (b.category, b.nbytes) for b in bufs} == want


def test_backward_splits_into_input_and_weight_calls():
    """I is every step's input-gradient calls, W its weight-gradient calls (each matmul's dW,
    each bias's sum), both in backward's step order; W reads the cotangent of each layer's
    pre-activation (the root its aliases share) and, under recompute only, the matmuls'
    inputs that no slot keeps."""
    g = mlp([3, 4, 5, 6, 2], bias=True)
    st = partition(g, 3, "uniform").stages[1]  # layer 2, between stages
    low = lw.lower(st.graph, output=st.output, input_grad=True, recompute=False)
    assert keys(low.input_calls) == ["act_backward", "matmul_nn"]
    assert keys(low.weight_calls) == ["sum_rows", "matmul_tn"]
    assert {c.param for c in low.weight_calls} == set(low.params)
    calls = [c for s in reversed(low.steps) for c in s.backward]
    assert sorted(map(id, calls)) == sorted(map(id, (*low.input_calls, *low.weight_calls)))
    assert low.pending_grads == (low.output,) and low.pending_values == ()
    whole_low = lw.lower(g, output=None, input_grad=False, recompute=True)
    assert keys(whole_low.weight_calls) == ["sum_rows", "matmul_tn"] * 4
    assert whole_low.pending_grads == ("o", "h3", "h2", "h1")
    assert whole_low.pending_values == ("h3", "h2", "h1")  # x is kept in the slot


def test_optimizer_buffers_are_named_per_slot():
    low = whole(mlp([3, 2], bias=True))
    specs = low.buffers(in_flight=0, optimizer_slots=2)
    opt = [b.name for b in specs if b.category == "optimizer"]
    assert opt == ["opt[0]:W1", "opt[1]:W1", "opt[0]:b1", "opt[1]:b1"]
    # a buffer's bytes are its allocation's: 24 bytes of data on a 64-byte line, plus the slack
    assert low.optimizer_buffer(1, "W1").nbytes(ROWS, "float32") == 64 + 64


def test_split_last_weight_runs_the_first_layers_weight_gradient_in_row_blocks():
    g = mlp([6, 7, 4, 3])
    low = whole(g)
    split = split_last_weight(low, 3)
    assert split_last_weight(low, 1) is low
    assert split_last_weight(split, 2) is split  # split already
    last, *_ = [c for c in low.weight_calls if c.param == "W1"]
    blocks = [c for c in split.weight_calls if c.param == "W1"]
    assert [c.rows for c in blocks] == [(0, 3), (3, 5), (5, 7)]  # W1 is 7 x 6
    assert [c.last for c in blocks] == [False, False, True]
    assert all(replace(c, rows=None, last=True) == last for c in blocks)
    assert last.splits == (0,)  # matmul_tn(d_out, in0, d_in1, beta): d_out's columns
    assert split.weight_calls[: -len(blocks)] == low.weight_calls[:-1]
    assert split.input_calls == low.input_calls
    bufs = dict(in_flight=2, optimizer_slots=2)
    assert split.buffers(**bufs) == low.buffers(**bufs)
    with pytest.raises(ValueError, match="8 row blocks of 7 rows"):
        row_blocks(7, 8)
    with pytest.raises(ValueError, match="0 row blocks"):
        row_blocks(7, 0)
