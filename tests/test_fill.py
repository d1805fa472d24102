"""W fills a stage's waits (graphpart/fill.py, workers/walk.py, workers/push.run_step).

Contract. `Fill` walks one stage's list: the F's, I's and B's run in the list's order, the
W's in theirs, each in `pieces` pieces in order, a W only after its I; a W piece runs only
where the next F, I or B is not ready or may not run yet, and never more micro-batches are
in flight (F to W) or pending (I to W) than the list itself holds; every action runs once,
whatever arrives when, and the walk ends. Stages that fill give the oracle's gradients and
bit for bit the gradients of the list run as written, with W pieces moved between other
actions when inputs come late.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import mlp_problem
from hypothesis import given, settings
from hypothesis import strategies as st

from graphpart.autodiff import value_and_grad
from graphpart.engines.wiring import wire
from graphpart.fill import Fill
from graphpart.optim import SGD
from graphpart.plan import schedule as sch
from graphpart.plan.partition import partition, split_batch
from workers.push import Inbox, run_step
from workers.stage import StageWorker


def _walk(acts: list[sch.Action], pieces: int, ready) -> list[tuple[str, int | None]]:
    fill = Fill([a.kind for a in acts], [a.mb for a in acts], pieces)
    out = []
    while (move := fill.next(lambda i: ready(acts[i]))) is not None:
        fill.ran(move)
        out.append((str(acts[move[0]]), move[1]))
    return out


def test_ready_inputs_run_before_the_ws_memory_allows():
    """The last stage of ZB-H1 (K=2, M=4), every input at hand: W's wait until the list's
    two micro-batches in flight force them."""
    acts = sch.zb_h1(2, 4)[1]
    assert " ".join(map(str, acts)) == "F0 I0 F1 I1 W0 W1 F2 I2 F3 I3 W2 W3"
    order = [a for a, _ in _walk(acts, 1, lambda a: True)]
    assert order == "F0 I0 F1 I1 W0 F2 I2 W1 F3 I3 W2 W3".split()


def test_late_inputs_are_waited_for_in_w_pieces():
    """Stage 0 of ZB-H1 (K=2, M=4) whose I's never arrive early: each wait for an I is
    filled with the next W's pieces, in order."""
    acts = sch.zb_h1(2, 4)[0]
    order = _walk(acts, 2, lambda a: a.kind != "I")
    want = [("F0", None), ("F1", None), ("I0", None), ("W0", 0), ("W0", 1), ("I1", None)]
    assert order[:6] == want


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(sch.KINDS),
    stages=st.integers(1, 4),
    micro=st.integers(1, 7),
    pieces=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_any_arrivals_keep_the_orders_and_the_memory(kind, stages, micro, pieces, seed):
    rng = np.random.default_rng(seed)
    for acts in sch.make(kind, stages, micro):
        order = _walk(acts, pieces, lambda a: bool(rng.integers(2)))
        whole = [a for a, p in order if p is None or p == pieces - 1]
        assert sorted(whole) == sorted(map(str, acts))  # every action once, each W whole
        for kinds in ("FIB", "W"):
            listed = [str(a) for a in acts if a.kind in kinds]
            assert [a for a in whole if a[0] in kinds] == listed
        w_pieces = [(a, p) for a, p in order if a[0] == "W"]
        assert w_pieces == [(str(a), p) for a in acts if a.kind == "W" for p in range(pieces)]
        flight = pending = 0
        for a, p in order:
            if p not in (None, pieces - 1):
                continue
            flight += {"F": 1, "B": -1, "W": -1}.get(a[0], 0)
            pending += {"I": 1, "W": -1}.get(a[0], 0)
            assert flight <= sch.peak_in_flight(acts) and pending <= sch.peak_pending(acts)
        for a, _ in order:  # a W after its I
            if a[0] == "W":
                assert order.index(("I" + a[1:], None)) < order.index((a, 0))


def test_bad_lists_are_named():
    with pytest.raises(ValueError, match="pieces=0"):
        Fill(["F"], [0], 0)
    with pytest.raises(ValueError, match="2 kinds for 1"):
        Fill(["F", "I"], [0], 1)
    fill = Fill(["F", "I", "W"], [0, 0, 0])
    with pytest.raises(RuntimeError, match="I0 ran out of its list's order"):
        fill.ran((1, None))


SIZES = [5, 6, 4, 7, 3]
N = 8


def _run(plan, params, m, x, y, fill, delay_s):
    """Both stages of a K=2 ZB-H1 step on threads; each forward send sleeps `delay_s`, so
    the last stage's waits fill, and each W piece `delay_s / 2`; returns the workers and
    each one's calls in order."""
    ws = [
        StageWorker(
            s.graph, {p: params[p].copy() for p in s.params}, SGD(lr=0.1),
            output=s.output, input_grad=s.index > 0, max_rows=N, index=s.index,
        )
        for s in plan.stages
    ]  # fmt: skip
    calls: list[list[tuple]] = [[], []]  # (method, micro-batch, W's piece or None)
    for i, w in enumerate(ws):
        for name in ("forward", "backward_input", "backward_weight"):
            real = getattr(w, name)

            def logged(*a, real=real, name=name, i=i):
                calls[i].append((name, a[0], a[2] if len(a) > 2 else None))
                if name == "backward_weight":
                    time.sleep(delay_s / 2)  # slow W pieces: a forward arrives inside a W
                return real(*a)

            setattr(w, name, logged)
    boxes = [Inbox(), Inbox()]
    wiring = wire("zb-h1", 2, m)
    rows = split_batch(len(x), m)

    def send_forward(key, a):
        time.sleep(delay_s)
        boxes[1].put(key, a.copy())

    errors: list[BaseException] = []

    def run(i):
        try:
            run_step(
            ws[i], 0, wiring.stages[i], boxes[i],
            xs=[x[r] for r in rows] if i == 0 else None,
            ys=[y[r] for r in rows] if i == 1 else None,
            scale=1.0 / len(x), update=False,
            send_forward=send_forward if i == 0 else None,
            send_backward=None if i == 0 else (lambda key, a: boxes[0].put(key, a.copy())),
            timeout_s=30, fill=fill,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return ws, calls


def test_filled_stages_are_the_listed_ones_bit_for_bit():
    g, params, x, y = mlp_problem(SIZES, N, seed=4, weight_decay=0.1)
    _, want = value_and_grad(g, params, {"x": x, "y": y})
    plan = partition(g, 2, "uniform")
    listed, _ = _run(plan, params, 4, x, y, fill=False, delay_s=0.0)
    filled, calls = _run(plan, params, 4, x, y, fill=True, delay_s=0.02)
    # the last stage waited for forwards: a W stopped between pieces for one
    n = filled[1].weight_calls
    assert n > 1
    assert any(
        c[0] == "backward_weight" and c[2][0] < n - 1 and nxt[0] != "backward_weight"
        for c, nxt in zip(calls[1], calls[1][1:], strict=False)
    ), calls[1]
    for a, b in zip(listed, filled, strict=True):
        got, ref = a.get_grads(), b.get_grads()
        for name, gw in got.items():
            assert np.array_equal(gw, ref[name]), name
            np.testing.assert_allclose(gw, want[name], rtol=1e-10)
