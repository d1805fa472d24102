"""Contract of the stage worker (workers/stage.py over workers/program.py), without Ray.

One StageWorker per stage of a partition, driven by hand (forward of every micro-batch stage by
stage, backward in reverse stage order, each loss scaled by 1/N of the whole batch, then
`finish`), gives the same J and parameter gradients as graphpart.autodiff.value_and_grad
(float64, 1e-10 relative) for every activation / loss / bias combination and K in 1..3, also
with `recompute=True` (identical gradients) and in float32 (close, float32 arrays). Activation
slots are taken by forward and freed by backward: the number of slots equals the peak number of
micro-batches in flight, and they are re-used step after step. A backward before its forward,
or a second forward of a micro-batch still in flight, raises RuntimeError. `infer` returns the
same logits as autodiff.forward's "o" and allocates no extra slot. `finish` adds lambda W once
per step and applies the optimizer; `zero_grad` starts a fresh step; state round-trips.
`backward` equals `backward_input` followed, later, by `backward_weight`, bit for bit.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import mlp_problem, rel_err

from graphpart.autodiff import forward, value_and_grad
from graphpart.ir.ops import ACTIVATIONS, LOSSES
from graphpart.ir.sizes import allocated
from graphpart.optim import SGD, Adam, init_state, reference_step
from graphpart.plan.partition import partition, split_batch
from workers.stage import StageWorker

SIZES = [5, 4, 6, 3, 3]
N = 7


def problem(activation="tanh", loss="cross_entropy", bias=True, wd=0.1, seed=0, n=N):
    return mlp_problem(
        SIZES, n, seed=seed, activation=activation, bias=bias, loss=loss, weight_decay=wd
    )


def workers_for(plan, params, *, dtype=np.float64, max_rows=N, recompute=False, opt=None):
    opt = opt if opt is not None else SGD(lr=0.1)
    return [
        StageWorker(
            st.graph,
            {p: params[p].astype(dtype) for p in st.params},
            opt,
            output=st.output,
            input_grad=st.index > 0,
            max_rows=max_rows,
            index=st.index,
            recompute=recompute,
        )
        for st in plan.stages
    ]


def fwd(ws, plan, m, x, y, scale):
    h = x
    for w, st in zip(ws, plan.stages, strict=True):
        h = w.forward(m, h, y if st.is_last else None, scale)
        h = None if h is None else h.copy()
    return h


def bwd(ws, m, scale):
    g = None
    for w in reversed(ws):
        g = w.backward(m, g, scale)
        g = None if g is None else g.copy()
    return g


def run_step(ws, plan, x, y, microbatches, order="gpipe"):
    """Forward/backward of every micro-batch; returns (J, grads) from the workers."""
    n = len(x)
    scale = 1.0 / n
    rows = split_batch(n, microbatches)
    if order == "gpipe":
        for m, r in enumerate(rows):
            fwd(ws, plan, m, x[r], y[r], scale)
        for m in reversed(range(len(rows))):
            bwd(ws, m, scale)
    else:  # one micro-batch at a time
        for m, r in enumerate(rows):
            fwd(ws, plan, m, x[r], y[r], scale)
            bwd(ws, m, scale)
    J, grads = 0.0, {}
    for w in ws:
        res = w.finish(update=False)
        J += res.loss + res.s
        grads.update({k: v.copy() for k, v in w.get_grads().items()})
    return J, grads


# -- gradients equal the oracle -------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradients_match_autodiff(activation, loss, bias, k):
    g, params, x, y = problem(activation, loss, bias)
    J, grads = value_and_grad(g, params, {"x": x, "y": y})
    plan = partition(g, k, "uniform")
    for microbatches, order in ((1, "gpipe"), (3, "gpipe"), (N, "sequential")):
        ws = workers_for(plan, params)
        Jw, gw = run_step(ws, plan, x, y, microbatches, order)
        assert abs(Jw - J) <= 1e-10 * abs(J), (microbatches, order)
        assert set(gw) == set(grads)
        for name in grads:
            assert gw[name].dtype == np.float64
            assert rel_err(gw[name], grads[name]) < 1e-10, (name, microbatches, order)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_finish_reports_loss_and_regulariser_parts(k):
    g, params, x, y = problem("relu", "mse", True, wd=0.4, seed=1)
    vals = forward(g, params, {"x": x, "y": y})
    plan = partition(g, k, "balanced")
    ws = workers_for(plan, params)
    for m, r in enumerate(split_batch(N, 2)):
        fwd(ws, plan, m, x[r], y[r], 1 / N)
        bwd(ws, m, 1 / N)
    res = [w.finish(update=False) for w in ws]
    assert all(r.loss == 0.0 for r in res[:-1])  # only the last stage computes L
    np.testing.assert_allclose(res[-1].loss, float(vals["L"]), rtol=1e-12)
    np.testing.assert_allclose(sum(r.s for r in res), float(vals["s"]), rtol=1e-12)
    for st, r in zip(plan.stages, res, strict=True):
        own = 0.5 * 0.4 * sum(np.sum(params[p] ** 2) for p in st.params if p.startswith("W"))
        np.testing.assert_allclose(r.s, own, rtol=1e-12)


def test_no_weight_decay():
    g, params, x, y = problem("tanh", "cross_entropy", True, wd=0.0, seed=2)
    J, grads = value_and_grad(g, params, {"x": x, "y": y})
    plan = partition(g, 2, "uniform")
    Jw, gw = run_step(workers_for(plan, params), plan, x, y, 2)
    assert abs(Jw - J) <= 1e-10 * abs(J)
    for name in grads:
        assert rel_err(gw[name], grads[name]) < 1e-10, name


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("loss", LOSSES)
def test_recompute_gives_identical_gradients(k, loss):
    g, params, x, y = problem("sigmoid", loss, True, seed=3)
    plan = partition(g, k, "uniform")
    J0, g0 = run_step(workers_for(plan, params), plan, x, y, 3)
    ws = workers_for(plan, params, recompute=True)
    J1, g1 = run_step(ws, plan, x, y, 3)
    assert J1 == J0
    for name in g0:
        np.testing.assert_array_equal(g1[name], g0[name], err_msg=name)
    # recompute caches only the stage input (and labels) per micro-batch
    for w, st in zip(ws, plan.stages, strict=True):
        assert w.prog.saved == [st.input, *(["y"] if st.is_last else [])]


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("loss", LOSSES)
def test_float32(k, loss):
    g, params, x, y = problem("tanh", loss, True, seed=4)
    p32 = {n: v.astype(np.float32) for n, v in params.items()}
    J, grads = value_and_grad(
        g, {n: v.astype(np.float64) for n, v in p32.items()}, {"x": x, "y": y}
    )
    plan = partition(g, k, "uniform")
    ws = workers_for(plan, params, dtype=np.float32)
    out = ws[0].forward(0, x[:3].astype(np.float32), y[:3] if k == 1 else None, 1 / N)
    if out is not None:
        assert out.dtype == np.float32
    ws = workers_for(plan, params, dtype=np.float32)
    Jw, gw = run_step(ws, plan, x, y, 2)  # float64 inputs are cast into float32 buffers
    assert abs(Jw - J) / abs(J) < 1e-4
    for name in grads:
        assert gw[name].dtype == np.float32, name
        assert rel_err(gw[name], grads[name]) < 1e-4, name
    assert all(v.dtype == np.float32 for w in ws for v in w.get_params().values())


# -- activation slots -----------------------------------------------------------------------------


def _activation_bytes(w):
    return w.ledger.current["activation"]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_slots_freed_after_backward_and_reused(k):
    g, params, x, y = problem("relu", "cross_entropy", True, seed=5, n=8)
    plan = partition(g, k, "uniform")
    ws = workers_for(plan, params, max_rows=8)
    rows = split_batch(8, 4)
    # all four in flight at once: four slots
    for m, r in enumerate(rows):
        fwd(ws, plan, m, x[r], y[r], 1 / 8)
    for w in ws:
        assert w.stats().slots == 4 and len(w.prog.slot_of) == 4
        assert w.prog.free_slots == []
    per_slot = [_activation_bytes(w) // 4 for w in ws]
    assert all(b > 0 for b in per_slot)
    for m in reversed(range(4)):
        bwd(ws, m, 1 / 8)
    for w in ws:
        assert w.prog.slot_of == {} and w.prog.rows_of == {}
        assert sorted(w.prog.free_slots) == [0, 1, 2, 3]
    for w in ws:
        w.finish(update=False)
    snapshot = [w.get_grads() for w in ws]
    for w in ws:
        w.zero_grad()
    # second step, one micro-batch at a time: no new slots, no new activation bytes
    for m, r in enumerate(rows):
        fwd(ws, plan, m, x[r], y[r], 1 / 8)
        for w in ws:
            assert len(w.prog.slot_of) == 1
        bwd(ws, m, 1 / 8)
    for w, ps in zip(ws, per_slot, strict=True):
        assert w.stats().slots == 4
        assert _activation_bytes(w) == 4 * ps
        w.finish(update=False)
    for w, snap in zip(ws, snapshot, strict=True):  # same batch, same gradients
        for name, v in w.get_grads().items():
            assert rel_err(v, snap[name]) < 1e-12, name


@pytest.mark.parametrize("peak", [1, 2, 3])
def test_slot_count_equals_peak_in_flight(peak):
    g, params, x, y = problem("tanh", "mse", False, seed=6, n=6)
    plan = partition(g, 2, "uniform")
    ws = workers_for(plan, params, max_rows=6)
    rows = split_batch(6, 6)
    live: list[int] = []
    for m, r in enumerate(rows):  # keep at most `peak` micro-batches in flight
        fwd(ws, plan, m, x[r], y[r], 1 / 6)
        live.append(m)
        if len(live) == peak:
            bwd(ws, live.pop(0), 1 / 6)
    while live:
        bwd(ws, live.pop(0), 1 / 6)
    for w in ws:
        assert w.stats().slots == peak
    J, grads = value_and_grad(g, params, {"x": x, "y": y})
    got = {}
    for w in ws:
        w.finish(update=False)
        got.update(w.get_grads())
    for name in grads:
        assert rel_err(got[name], grads[name]) < 1e-10, name


def test_backward_before_forward_raises():
    g, params, x, y = problem(seed=7)
    plan = partition(g, 2, "uniform")
    ws = workers_for(plan, params)
    with pytest.raises(RuntimeError, match=r"backward of micro-batch 0 before its forward"):
        ws[1].backward(0, None, 1 / N)
    fwd(ws, plan, 0, x, y, 1 / N)
    bwd(ws, 0, 1 / N)
    with pytest.raises(RuntimeError, match=r"backward of micro-batch 0 before its forward"):
        ws[0].backward(0, np.zeros((N, SIZES[2])), 1 / N)  # already done


def test_forward_twice_raises():
    g, params, x, y = problem(seed=8)
    plan = partition(g, 2, "uniform")
    ws = workers_for(plan, params)
    ws[0].forward(3, x, None, 1 / N)
    with pytest.raises(RuntimeError, match=r"forward of micro-batch 3 twice"):
        ws[0].forward(3, x, None, 1 / N)


def test_other_misuse_raises_value_error():
    g, params, x, y = problem(seed=9)
    plan = partition(g, 2, "uniform")
    ws = workers_for(plan, params, max_rows=4)
    with pytest.raises(ValueError, match=r"5 rows exceeds max_rows=4"):
        ws[0].forward(0, x[:5], None, 1 / N)
    with pytest.raises(ValueError, match=r"5 rows exceed max_rows=4"):
        ws[0].infer(x[:5])
    h = ws[0].forward(0, x[:4], None, 1 / N).copy()
    with pytest.raises(ValueError, match=r"needs dJ/dh2"):
        ws[0].backward(0, None, 1 / N)
    with pytest.raises(ValueError, match=r"needs labels"):
        ws[1].forward(0, h, None, 1 / N)


def test_refused_forward_leaves_no_state():
    g, params, x, y = problem(seed=9)
    plan = partition(g, 1, "uniform")
    (w,) = workers_for(plan, params)
    with pytest.raises(ValueError, match=r"needs labels"):
        w.forward(0, x, None, 1 / N)
    w.forward(0, x, y, 1 / N)  # retrying with labels must work
    w.backward(0, None, 1 / N)


# -- inference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("bias", [False, True])
def test_infer_matches_autodiff_logits(k, loss, bias):
    g, params, x, y = problem("relu", loss, bias, seed=10)
    logits = forward(g, params, {"x": x, "y": y})["o"]
    plan = partition(g, k, "uniform")
    ws = workers_for(plan, params)
    for rows in (slice(0, N), slice(2, 5)):
        h = x[rows]
        for w in ws:
            h = w.infer(h)
        np.testing.assert_allclose(h, logits[rows], rtol=1e-12, atol=1e-14)
    for w in ws:
        assert w.stats().slots == 1 and w.prog.slot_of == {}
        assert w.prog.loss_sum == 0.0


def test_infer_during_training_uses_no_new_slot_and_keeps_gradients():
    g, params, x, y = problem("tanh", "cross_entropy", True, seed=11)
    J, grads = value_and_grad(g, params, {"x": x, "y": y})
    plan = partition(g, 2, "uniform")
    ws = workers_for(plan, params)
    rows = split_batch(N, 2)
    for m, r in enumerate(rows):
        fwd(ws, plan, m, x[r], y[r], 1 / N)
    bwd(ws, 1, 1 / N)  # micro-batch 0 still in flight; slot 1 is free
    h = x
    for w in ws:
        h = w.infer(h)
    np.testing.assert_allclose(h, forward(g, params, {"x": x, "y": y})["o"], rtol=1e-12)
    assert all(w.stats().slots == 2 for w in ws)
    bwd(ws, 0, 1 / N)
    got, Jw = {}, 0.0
    for w in ws:
        r = w.finish(update=False)
        Jw += r.loss + r.s
        got.update(w.get_grads())
    assert abs(Jw - J) <= 1e-10 * abs(J)
    for name in grads:
        assert rel_err(got[name], grads[name]) < 1e-10, name


# -- steps, optimizer and state -------------------------------------------------------------------


@pytest.mark.parametrize(
    "opt",
    [SGD(lr=0.1), SGD(lr=0.05, momentum=0.9, weight_decay=0.01), Adam(lr=0.01)],
    ids=["sgd", "momentum", "adam"],
)
def test_finish_applies_optimizer_like_reference(opt):
    g, params, x, y = problem("tanh", "cross_entropy", True, seed=12)
    plan = partition(g, 2, "uniform")
    ws = workers_for(plan, params, opt=opt)
    ref = {k: v.copy() for k, v in params.items()}
    state = init_state(opt, ref)
    for step in range(1, 4):
        _, grads = value_and_grad(g, ref, {"x": x, "y": y})
        reference_step(opt, ref, grads, state, step)
        for m, r in enumerate(split_batch(N, 2)):
            fwd(ws, plan, m, x[r], y[r], 1 / N)
            bwd(ws, m, 1 / N)
        for w in ws:
            w.finish(update=True)
            assert w.steps == step
    got = {}
    for w in ws:
        got.update(w.get_params())
    for name in ref:
        assert rel_err(got[name], ref[name]) < 1e-10, name


def test_zero_grad_starts_a_fresh_step():
    g, params, x, y = problem("relu", "mse", True, seed=13)
    plan = partition(g, 3, "uniform")
    ws = workers_for(plan, params)
    J1, g1 = run_step(ws, plan, x, y, 2)
    for w in ws:
        w.zero_grad()
        assert w.prog.loss_sum == 0.0
    J2, g2 = run_step(ws, plan, x, y, 3)
    assert abs(J2 - J1) <= 1e-12 * abs(J1)
    for name in g1:
        assert rel_err(g2[name], g1[name]) < 1e-12, name


def test_state_round_trip():
    opt = Adam(lr=0.01)
    g, params, x, y = problem("tanh", "cross_entropy", True, seed=14)
    plan = partition(g, 2, "uniform")
    a = workers_for(plan, params, opt=opt)
    for _ in range(2):
        for m, r in enumerate(split_batch(N, 2)):
            fwd(a, plan, m, x[r], y[r], 1 / N)
            bwd(a, m, 1 / N)
        for w in a:
            w.finish(update=True)
    states = [w.get_state() for w in a]
    assert all(s["steps"] == 2 and len(next(iter(s["opt"].values()))) == 2 for s in states)
    b = workers_for(plan, {k: np.zeros_like(v) for k, v in params.items()}, opt=opt)
    for w, s in zip(b, states, strict=True):
        w.set_state(s)
    for wa, wb in zip(a, b, strict=True):
        sa, sb = wa.get_state(), wb.get_state()
        assert sa["steps"] == sb["steps"]
        for name in sa["params"]:
            np.testing.assert_array_equal(sa["params"][name], sb["params"][name])
            for u, v in zip(sa["opt"][name], sb["opt"][name], strict=True):
                np.testing.assert_array_equal(u, v)
    for ws in (a, b):  # one more identical step on both
        for m, r in enumerate(split_batch(N, 2)):
            fwd(ws, plan, m, x[r], y[r], 1 / N)
            bwd(ws, m, 1 / N)
        for w in ws:
            w.finish(update=True)
    for wa, wb in zip(a, b, strict=True):
        for name, v in wa.get_params().items():
            np.testing.assert_array_equal(v, wb.get_params()[name])


def test_ledger_accounts_parameters_gradients_and_optimizer_state():
    opt = SGD(lr=0.1, momentum=0.9)
    g, params, x, y = problem("tanh", "cross_entropy", True, seed=15)
    plan = partition(g, 2, "uniform")
    ws = workers_for(plan, params, opt=opt)
    for w, st in zip(ws, plan.stages, strict=True):
        nbytes = sum(allocated(8 * int(np.prod(v.shape))) for v in st.graph.params)  # aligned
        cur = w.ledger.current
        assert cur["parameter"] == nbytes
        assert cur["gradient"] == nbytes
        assert cur["optimizer"] == nbytes  # one momentum buffer per parameter
        assert cur["activation"] == 0  # no slot before the first forward
    stats = ws[0].stats()
    assert stats.stage == 0 and stats.slots == 0
    run_step(ws, plan, x, y, 1)
    boundary = N * SIZES[2] * 8  # h2, and its gradient coming back
    assert ws[0].bytes_sent == ws[0].bytes_received == boundary
    assert ws[1].bytes_sent == ws[1].bytes_received == boundary


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_received_arrays_are_only_read(bias, recompute):
    """Ray hands workers read-only arrays: forward inputs and received gradients stay intact."""
    g, params, x, y = problem("tanh", "cross_entropy", bias, seed=16)
    J, grads = value_and_grad(g, params, {"x": x, "y": y})
    plan = partition(g, 3, "uniform")
    ws = workers_for(plan, params, recompute=recompute)
    frozen = []

    def ro(a):
        a = np.array(a, copy=True)
        a.flags.writeable = False
        frozen.append((a, a.copy()))
        return a

    h = ro(x)
    for w, st in zip(ws, plan.stages, strict=True):
        h = w.forward(0, h, ro(y) if st.is_last else None, 1 / N)
        h = None if h is None else ro(h)
    gin = None
    for w in reversed(ws):
        gin = w.backward(0, gin, 1 / N)
        gin = None if gin is None else ro(gin)
    for a, before in frozen:
        np.testing.assert_array_equal(a, before)
    got = {}
    for w in ws:
        w.finish(update=False)
        got.update(w.get_grads())
    for name in grads:
        assert rel_err(got[name], grads[name]) < 1e-10, name


def test_resident_peak_catches_what_no_call_sampled():
    """The peak resident memory a worker reports is the process's peak since its baseline:
    memory taken and given back between two calls (no call of the worker saw it) counts."""
    g, params, x, y = problem("tanh", "cross_entropy", True, seed=16)
    plan = partition(g, 1)
    (w,) = workers_for(plan, params)
    run_step([w], plan, x, y, 1)
    before = w.rss()
    assert before.baseline > 0 and before.peak >= before.baseline
    can_reset = os.access("/proc/self/clear_refs", os.W_OK)
    assert before.peak_from == ("VmHWM" if can_reset else "samples")
    big = np.ones(64 << 20, np.uint8)  # 64 MiB, touched, then freed before the next call
    del big
    run_step([w], plan, x, y, 1)
    after = w.rss()
    if after.peak_from == "VmHWM":  # Linux: the kernel's mark, reset at the baseline
        assert after.peak >= before.current + (60 << 20)
    else:  # elsewhere one sample per step: at least the current figure
        assert after.peak >= after.current - (4 << 20)


def _split_step(ws, plan, x, y, microbatches, whole):
    """Every micro-batch forward, then backward stage by stage in reverse: B, or I with the
    W of each micro-batch deferred until every I of its stage has run (most pending)."""
    n = len(x)
    scale = 1.0 / n
    rows = split_batch(n, microbatches)
    for m, r in enumerate(rows):
        fwd(ws, plan, m, x[r], y[r], scale)
    for m in range(len(rows)):
        g = None
        for w in reversed(ws):
            g = w.backward(m, g, scale) if whole else w.backward_input(m, g, scale)
            g = None if g is None else g.copy()
    if not whole:
        for w in ws:
            for m in range(len(rows)):
                w.backward_weight(m, scale)
    return [w.finish(update=False) for w in ws], [w.get_grads() for w in ws]


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_backward_is_input_then_weight_gradients_bit_for_bit(k, recompute):
    """B equals I followed (later) by W exactly: the same J and gradients, bit for bit, with
    every micro-batch's W deferred; the slots and pending slots are all given back; the busy
    clock counts W's seconds apart (`Busy.weight`, within `backward`), and the CPU time the OS
    gave the compute calls (`Busy.compute_cpu`) is positive and at most their wall time."""
    g, params, x, y = problem(n=N)
    plan = partition(g, k, "uniform")
    got = {}
    for whole in (True, False):
        ws = workers_for(plan, params, recompute=recompute)
        got[whole] = _split_step(ws, plan, x, y, 3, whole)
        for w in ws:
            assert not w.prog.slot_of and not w.prog.pending_of
            assert len(w.prog.pending) == (0 if whole else 3)
            # busy clocks: W's time is part of the backward's, and only split runs have it
            assert (w.busy.weight > 0) == (not whole)
            assert w.busy.weight <= w.busy.backward
            # the OS's CPU time of the compute calls: positive, never above their wall time
            wall = w.busy.forward + w.busy.backward
            assert 0.0 < w.busy.compute_cpu <= wall * 1.1 + 1e-3  # the clock's accounting
    (fin_b, grads_b), (fin_s, grads_s) = got[True], got[False]
    assert fin_b == fin_s
    for a, b in zip(grads_b, grads_s, strict=True):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
