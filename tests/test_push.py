"""Stages that run a whole step each and push tensors to each other (workers/push.py), no Ray.

Contract: K stage workers, each running `run_step` on its own thread with its schedule's
actions (GPipe or 1F1B, any M), wired inbox to inbox, give the same J and gradients as the
autodiff oracle (float64, 1e-12 relative) and the same parameters after optimizer steps as the
reference optimizer; a failing action raises ActionFailed naming the action, and the
neighbours waiting on the failed stage stop with NeighbourFailed when told (Inbox.fail) rather
than wait out their timeout; a missing tensor raises TimeoutError naming it; what an aborted
step left in an inbox does not leak into the next step. With `infer`, the stages run
inference forwards and the last returns its outputs by micro-batch, the reference forward's.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import mlp_problem

from graphpart.autodiff import forward, value_and_grad
from graphpart.engines.wiring import wire, wire_inference
from graphpart.optim import SGD, init_state, reference_step
from graphpart.plan.partition import partition, split_batch
from workers.push import ActionFailed, Inbox, NeighbourFailed, run_step
from workers.stage import StageWorker

SIZES = [5, 6, 4, 7, 3]
N = 8


def _problem(seed=0):
    return mlp_problem(SIZES, N, seed=seed, weight_decay=0.1)


def _workers(plan, params, opt):
    return [
        StageWorker(
            st.graph,
            {p: params[p].copy() for p in st.params},
            opt,
            output=st.output,
            input_grad=st.index > 0,
            max_rows=N,
            index=st.index,
        )
        for st in plan.stages
    ]


def _step(ws, inboxes, kind, m, x, y, step, update=True, timeout_s=30.0, infer=False, delay_s=0.0):
    """Every stage's run_step on its own thread; returns the results (or raised errors).
    `delay_s`: each forward send sleeps that long first (a slow link)."""
    k = len(ws)
    w = wire_inference(k, m) if infer else wire(kind, k, m)
    parts = [x[r] for r in split_batch(len(x), m)]
    labels = [y[r] for r in split_batch(len(x), m)]
    out: list = [None] * k

    def forward_to(i, key, a):
        time.sleep(delay_s)
        inboxes[i + 1].put(key, a.copy())

    def run(i):
        try:
            out[i] = run_step(
                ws[i],
                step,
                w.stages[i],
                inboxes[i],
                xs=parts if i == 0 else None,
                ys=labels if i == k - 1 else None,
                scale=1.0 / len(x),
                update=update,
                send_forward=None if i == k - 1 else (lambda key, a, i=i: forward_to(i, key, a)),
                send_backward=None
                if i == 0
                else (lambda key, a, i=i: inboxes[i - 1].put(key, a.copy())),
                timeout_s=timeout_s,
                infer=infer,
                busy=ws[i].busy,
            )
        except Exception as e:  # noqa: BLE001 - returned for the test to inspect
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
@pytest.mark.parametrize("m", [1, 3, 8])
def test_pushed_step_equals_oracle(k, kind, m):
    g, params, x, y = _problem()
    J, grads = value_and_grad(g, params, {"x": x, "y": y})
    plan = partition(g, k, "uniform")
    ws = _workers(plan, params, SGD(lr=0.1))
    res = _step(ws, [Inbox() for _ in ws], kind, m, x, y, step=1, update=False)
    assert sum(r.loss + r.s for r in res) == pytest.approx(J, rel=1e-12)
    for w in ws:
        for name, gw in w.get_grads().items():
            np.testing.assert_allclose(gw, grads[name], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("m", [1, 3])
def test_pushed_inference_is_the_reference_forward(k, m):
    g, params, x, y = _problem()
    want = forward(g, params, {"x": x, "y": y})["o"]
    ws = _workers(partition(g, k, "uniform"), params, SGD(lr=0.1))
    res = _step(ws, [Inbox() for _ in ws], "gpipe", m, x, y, step=1, infer=True)
    assert all(r == [] for r in res[:-1])
    np.testing.assert_allclose(np.concatenate(res[-1]), want, rtol=1e-12)


def test_pushed_steps_update_like_the_reference_optimizer():
    g, params, x, y = _problem(1)
    opt = SGD(lr=0.1, momentum=0.9)
    ref = {k: v.copy() for k, v in params.items()}
    st = init_state(opt, ref)
    plan = partition(g, 3, "uniform")
    ws = _workers(plan, params, opt)
    inboxes = [Inbox() for _ in ws]
    for t in range(1, 4):
        _, gr = value_and_grad(g, ref, {"x": x, "y": y})
        reference_step(opt, ref, gr, st, t)
        _step(ws, inboxes, "1f1b", 4, x, y, step=t)
    for w in ws:
        for name, p in w.get_params().items():
            np.testing.assert_allclose(p, ref[name], rtol=1e-12)
    assert all(len(ib) == 0 for ib in inboxes)  # every tensor sent was taken


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_wait_and_span_are_the_steps_wall_clocks():
    """A stage's `busy.wait` holds the wall time its actions were blocked on a neighbour's
    tensor (here: a forward link slowed by 50 ms a send), `busy.span` the step call's whole
    wall time, which holds the wait and the work."""
    g, params, x, y = _problem()
    plan = partition(g, 2, "uniform")
    ws = _workers(plan, params, SGD(lr=0.1))
    out = _step(ws, [Inbox(), Inbox()], "1f1b", 2, x, y, step=0, delay_s=0.05)
    assert not any(isinstance(r, Exception) for r in out), out
    first, last = ws[0].busy, ws[1].busy
    # both micro-batches' activations came 50 ms late (less the little the last stage took to
    # reach its first take while the first already slept)
    assert last.wait >= 2 * 0.05 * 0.9
    for b in (first, last):
        assert b.wait < b.span
        assert 0.0 <= b.wait_cpu <= b.wait * 1.1 + 1e-3  # the polling inside the waits
        assert b.forward + b.backward + b.finish + b.wait <= b.span
    assert first.span >= 2 * 0.05  # the sends (its own calls) are inside its step


def test_failure_names_the_action_and_neighbours_stop_when_told():
    g, params, x, y = _problem(2)
    plan = partition(g, 2, "uniform")
    ws = _workers(plan, params, SGD(lr=0.1))
    inboxes = [Inbox() for _ in ws]
    bad = y.copy()
    bad[-1] = 99  # out of range: the last stage's loss fails on the last micro-batch

    # the driver's part: once a stage fails, tell the others (the push transport does this)
    t0 = time.monotonic()
    timer = threading.Timer(0.5, lambda: inboxes[0].fail(7, "stage 1 failed"))
    timer.start()
    res = _step(ws, inboxes, "gpipe", 2, x, bad, step=7, timeout_s=30)
    timer.cancel()
    assert isinstance(res[1], ActionFailed) and res[1].what == "forward of micro-batch 1"
    assert "label" in str(res[1].cause)
    assert isinstance(res[0], NeighbourFailed) and "stage 1 failed" in str(res[0])
    assert time.monotonic() - t0 < 10  # woken, not timed out


def test_missing_tensor_times_out_naming_it():
    g, params, x, y = _problem(3)
    plan = partition(g, 2, "uniform")
    (_, w1) = _workers(plan, params, SGD(lr=0.1))
    with pytest.raises(TimeoutError, match="F tensor of micro-batch 0"):
        run_step(
            w1,
            1,
            wire("gpipe", 2, 1).stages[1],
            Inbox(),
            xs=None,
            ys=[y],
            scale=1.0 / N,
            update=False,
            send_forward=None,
            send_backward=lambda key, a: None,
            timeout_s=0.2,
        )


def test_an_aborted_steps_leftovers_do_not_leak():
    ib = Inbox()
    ib.put((1, "F", 0), "stale")
    ib.fail(1, "aborted")
    ib.clear_before(2)
    assert len(ib) == 0
    ib.put((2, "F", 0), "fresh")
    assert ib.take((2, "F", 0), timeout_s=1) == "fresh"
