"""Contract of graphpart.engines.wiring: the one description of a step every transport runs.

`wire(kind, K, M)` keeps each stage's schedule (its actions in order) and routes them: a
forward receives from the previous stage except on stage 0 (which reads the micro-batch), sends
to the next except on the last stage (which takes the labels); a backward receives from the
next stage except on the last, and sends to the previous except on stage 0; so does a
zero-bubble schedule's I (its output carries a cotangent, as B's), and its W neither receives
nor sends. `order` lists
every action once, keeps each stage's own order and puts every action after the ones it
depends on (F(k-1, m) before F(k, m); F(K-1, m) before B(K-1, m); B(k+1, m) before B(k, m);
I for B where split, and I(k, m) before W(k, m)).
`drive` issues exactly those calls with the right inputs (a receiving action gets its
neighbour's output handle, the last stage's backward its own forward's) and returns the
unconsumed outputs followed by each stage's finish. `wire_inference(K, M)` runs every
micro-batch's forward on every stage in order, routed as a step's forwards but without labels,
and `drive_inference` chains each micro-batch through the stages' `infer`, returning the last
stage's outputs by micro-batch.

With virtual stages (`wire(kind, K, M, chunks)`, kind interleaved or zbv) `stages` are the K
devices' lists, each action naming its chunk and virtual stage s (the placement's), routed as
stage s of a V-stage pipeline would be; an input or output between two chunks of one device
(the V's turn) is `near`, every other boundary (interleaved's wrap-around from device K-1 to
device 0 included) goes to another device under a key naming the sending virtual stage, so
that no two tensors of a step share a key; `order` respects every dependency between virtual
stages; `drive` calls each virtual stage (0..V-1) and returns the V finishes.
"""

from __future__ import annotations

import pytest

from graphpart.engines.wiring import StepFeed, drive, drive_inference, wire, wire_inference
from graphpart.plan import schedule as sch
from graphpart.plan.kinds import make as make_schedule


@pytest.mark.parametrize("kind", sch.KINDS)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8])
def test_order_respects_dependencies(kind, k, m):
    w = wire(kind, k, m)
    actions = sch.make(kind, k, m)
    assert [list(a) for a in w.actions] == actions
    assert len(w.order) == sum(len(a) for a in actions)
    assert len(set(w.order)) == len(w.order)
    for stage in range(k):  # each stage's own order is kept, and is the routed list
        assert [str(a) for s, a in w.order if s == stage] == [str(a) for a in actions[stage]]
        assert [a for s, a in w.order if s == stage] == list(w.stages[stage])
    pos = {(s, a.kind, a.mb): i for i, (s, a) in enumerate(w.order)}
    back = {(s, a.mb): a.kind for s, a in w.order if a.kind in "BI"}  # B, or I where split
    for stage in range(k):
        for mb in range(m):
            b = back[stage, mb]
            if stage > 0:
                assert pos[stage - 1, "F", mb] < pos[stage, "F", mb]
            if stage < k - 1:
                assert pos[stage + 1, back[stage + 1, mb], mb] < pos[stage, b, mb]
            assert pos[stage, "F", mb] < pos[stage, b, mb]
            if b == "I":
                assert pos[stage, "I", mb] < pos[stage, "W", mb]
    assert w.peak_in_flight == tuple(sch.peak_in_flight(a) for a in actions)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("kind", ["gpipe", "zb-h1"])
def test_routing_flags(k, kind):
    w = wire(kind, k, 3)
    last = k - 1
    for stage, acts in enumerate(w.stages):
        for a in acts:
            if a.kind == "F":
                assert (a.receives, a.sends, a.labels) == (stage > 0, stage < last, stage == last)
            elif a.kind == "W":
                assert (a.receives, a.sends, a.labels, a.carries) == (False, False, False, None)
            else:
                assert (a.receives, a.sends, a.labels) == (stage < last, stage > 0, False)
                assert a.carries == "B"


def test_drive_issues_each_call_with_its_inputs():
    w = wire("1f1b", 2, 2)
    calls = []

    def call(k, method, *args):
        calls.append((k, method, *args))
        return f"{method}{k}.{args[0]}" if method != "finish" else f"finish{k}"

    feed = StepFeed(xs=["x0", "x1"], ys=["y0", "y1"], scale=0.5, update=True)
    leaves = drive(w, feed, call)
    by_stage = {k: [c[1:] for c in calls if c[0] == k] for k in (0, 1)}
    assert by_stage[0] == [
        ("forward", 0, "x0", None, 0.5),
        ("forward", 1, "x1", None, 0.5),
        ("backward", 0, "backward1.0", 0.5),
        ("backward", 1, "backward1.1", 0.5),
        ("finish", True),
    ]
    assert by_stage[1] == [
        ("forward", 0, "forward0.0", "y0", 0.5),
        ("backward", 0, "forward1.0", 0.5),  # the last stage: its own forward's output
        ("forward", 1, "forward0.1", "y1", 0.5),
        ("backward", 1, "forward1.1", 0.5),
        ("finish", True),
    ]
    issued = [c[1:3] if c[1] != "finish" else c[:2] for c in calls]
    assert issued.index(("backward", 0)) > issued.index(("forward", 0))  # handles exist first
    assert leaves == ["backward0.0", "backward0.1", "finish0", "finish1"]


def test_drive_issues_split_backwards_with_their_inputs():
    """ZB-H1, K=2, M=2: an I takes the next stage's I output (the last stage's, its own
    forward's), a W takes nothing; W's None outputs are leaves too."""
    w = wire("zb-h1", 2, 2)
    calls = []

    def call(k, method, *args):
        calls.append((k, method, *args))
        return f"{method}{k}.{args[0]}" if method != "finish" else f"finish{k}"

    feed = StepFeed(xs=["x0", "x1"], ys=["y0", "y1"], scale=0.5, update=True)
    leaves = drive(w, feed, call)
    by_stage = {k: [c[1:] for c in calls if c[0] == k] for k in (0, 1)}
    assert by_stage[0] == [
        ("forward", 0, "x0", None, 0.5),
        ("forward", 1, "x1", None, 0.5),
        ("backward_input", 0, "backward_input1.0", 0.5),
        ("backward_weight", 0, 0.5),
        ("backward_input", 1, "backward_input1.1", 0.5),
        ("backward_weight", 1, 0.5),
        ("finish", True),
    ]
    assert by_stage[1] == [
        ("forward", 0, "forward0.0", "y0", 0.5),
        ("backward_input", 0, "forward1.0", 0.5),
        ("forward", 1, "forward0.1", "y1", 0.5),
        ("backward_input", 1, "forward1.1", 0.5),
        ("backward_weight", 0, 0.5),
        ("backward_weight", 1, 0.5),
        ("finish", True),
    ]
    assert sorted(leaves) == sorted(
        ["backward_input0.0", "backward_input0.1", "finish0", "finish1"]
        + [f"backward_weight{k}.{m}" for k in (0, 1) for m in (0, 1)]
    )


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("m", [1, 3])
def test_inference_wiring_is_forwards_in_order(k, m):
    w = wire_inference(k, m)
    assert w.k == k and w.microbatches == m
    for s, acts in enumerate(w.stages):
        assert [(a.kind, a.mb) for a in acts] == [("F", j) for j in range(m)]
        assert all(a.receives == (s > 0) and a.sends == (s < k - 1) for a in acts)
        assert not any(a.labels for a in acts)
    pos = {(s, a.mb): i for i, (s, a) in enumerate(w.order)}
    assert all(pos[(s - 1, j)] < pos[(s, j)] for s in range(1, k) for j in range(m))


def test_drive_inference_chains_each_micro_batch_through_the_stages():
    w = wire_inference(3, 2)
    calls = []

    def call(k, method, inp):
        calls.append((k, method, inp))
        return f"{k}({inp})"

    assert drive_inference(w, ["x0", "x1"], call) == ["2(1(0(x0)))", "2(1(0(x1)))"]
    assert {c[1] for c in calls} == {"infer"} and len(calls) == 6


@pytest.mark.parametrize(("kind", "v"), [("interleaved", 1), ("interleaved", 3), ("zbv", 2)])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("m", [1, 2, 5])
def test_virtual_routing_keys_and_order(kind, v, k, m):
    w = wire(kind, k, m, v)
    where, actions = make_schedule(kind, k, v, m)
    V, owner = k * v, where.owner
    assert (w.k, w.devices, w.owner, w.virtual) == (V, k, owner, True)
    sent, taken = [], []
    for d, acts in enumerate(w.stages):
        assert [(a.kind, a.mb, a.chunk) for a in acts] == [
            (a.kind, a.mb, a.chunk) for a in actions[d]
        ]
        for a in acts:
            s = a.stage
            assert owner[s] == d and where.chunk(s) == a.chunk
            if a.kind == "F":
                assert (a.receives, a.sends, a.labels) == (s > 0, s < V - 1, s == V - 1)
                assert a.near_in == (s > 0 and owner[s - 1] == d)
                assert a.near_out == (s < V - 1 and owner[s + 1] == d)
            elif a.kind == "W":
                assert not (a.receives or a.sends or a.near_in or a.near_out)
            else:
                assert (a.receives, a.sends) == (s < V - 1, s > 0)
                assert a.near_in == (s < V - 1 and owner[s + 1] == d)
            if a.sends:
                sent.append((a.tag_out, a.mb))
            if a.receives:
                taken.append((a.tag_in, a.mb))
    assert len(set(sent)) == len(sent) and sorted(sent) == sorted(taken)
    if kind == "zbv" and k > 0:  # the V's turn: device K-1 passes stage K-1 to stage K in process
        turn = [a for a in w.stages[k - 1] if a.kind == "F" and a.stage == k - 1]
        assert all(a.near_out for a in turn)
    done = {}
    for d, a in w.order:  # every dependency before its dependant
        s = a.stage
        if a.kind == "F" and s > 0:
            assert ("F", s - 1, a.mb) in done
        if a.kind in ("B", "I"):
            assert (
                (("B", s + 1, a.mb) in done or ("I", s + 1, a.mb) in done)
                if s < V - 1
                else (("F", s, a.mb) in done)
            )
        if a.kind == "W":
            assert ("I", s, a.mb) in done
        done[a.kind, s, a.mb] = d


def test_drive_calls_virtual_stages():
    """ZB-V over 2 devices: drive calls stages 0..3 (not devices) and returns 4 finishes."""
    w = wire("zbv", 2, 2)
    calls = []

    def call(stage, method, *args):
        calls.append((stage, method))
        return f"{method}{stage}"

    out = drive(w, StepFeed(xs=["x0", "x1"], ys=["y0", "y1"], scale=0.5, update=True), call)
    assert out[-4:] == ["finish0", "finish1", "finish2", "finish3"]
    assert {s for s, m in calls if m == "forward"} == {0, 1, 2, 3}
    inf = wire_inference(2, 3, make_schedule("zbv", 2, 2, 1)[0])
    got = drive_inference(inf, ["a", "b", "c"], lambda s, method, x: f"{x}>{s}")
    assert got == ["a>0>1>2>3", "b>0>1>2>3", "c>0>1>2>3"]
