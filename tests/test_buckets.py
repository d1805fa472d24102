"""Gradient buckets and their all-reduce's progress (workers/buckets.py), and Program's grad_hook.

Contract: plan_buckets lays the parameters end to end in the order given (the order the
backward finishes them) and cuts the buffer into contiguous buckets, each cut at or below a
layer's end (a layer's weight and bias stay in one bucket but for a tail of fewer than
world x 64 bytes) and at a multiple of world x 64 bytes, a bucket closing once it holds
`bucket_bytes` (every layer at 0, one bucket when larger than the buffer); so every bucket's
ring messages together fit the one ring channel the memory model sizes for the whole buffer.
Ready hands out buckets in order, each once all its parameters are final. Progress runs the
buckets' steps in order on the caller's thread, each as far as its messages have come at a
poll, skips a step's later buckets after a failure and raises it from drain; the spans it
reports make exposed_time <= own_time when everything was handed over before the compute's
end; critical_path sets the replicas' marks side by side, a step's exposed communication
counted from its latest compute end. Program.grad_hook is told after each call of a backward
(B, or W) the parameters whose gradient it wrote for the last time, each once, and a hooked B
(the graph's order) gives the plain B's gradients bit for bit.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import max_rel, mlp_problem

from graphpart.plan.memory import ring_channel_bytes
from workers.buckets import (
    Piece,
    Progress,
    Ready,
    Span,
    critical_path,
    exposed_time,
    own_time,
    plan_buckets,
)
from workers.finals import Final
from workers.program import Program
from workers.ring import ring_chunks
from workers.stats import ReduceMark

LAYERS = [("W4", 40, 4), ("b4", 10, 4), ("W3", 300, 3), ("b3", 30, 3), ("W2", 90, 2)]


def _padded(nbytes: int) -> int:
    return -(-nbytes // 64) * 64


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("bucket_bytes", [0, 200, 1 << 20])
def test_buckets_tile_the_buffer_at_aligned_layer_ends(world, itemsize, bucket_bytes):
    """Buckets are contiguous and cover the buffer; pieces lie where the parameters do; every
    cut is a multiple of world x 64 bytes at or below a layer's end (within one line of it)."""
    bs = plan_buckets(LAYERS, itemsize, world, bucket_bytes)
    line = world * 64 // itemsize
    assert bs[0].start == 0 and bs[-1].stop == 470
    offsets = {"W4": 0, "b4": 40, "W3": 50, "b3": 350, "W2": 380}
    ends = [50, 380, 470]
    for a, b in zip(bs[:-1], bs[1:], strict=True):
        assert a.stop == b.start and a.stop % line == 0
        assert any(0 <= e - a.stop < line for e in ends)
    for b in bs:
        assert b.index == bs.index(b)
        assert sum(p.hi - p.lo for p in b.pieces) == b.stop - b.start
        for p in b.pieces:
            assert p.at == offsets[p.name] + p.lo
    if bucket_bytes >= 470 * itemsize:
        assert len(bs) == 1


def test_every_layer_a_bucket_at_zero_bytes_one_at_large():
    """bucket_bytes 0: a bucket per layer (cuts aligned at world x 64 bytes: float64, world 1,
    8 elements); a size above the buffer's: one bucket."""
    bs = plan_buckets(LAYERS, 8, 1, 0)
    assert [(b.start, b.stop) for b in bs] == [(0, 48), (48, 376), (376, 470)]
    assert [sorted(b.params) for b in bs] == [["W4", "b4"], ["W3", "b3", "b4"], ["W2", "b3"]]
    assert len(plan_buckets(LAYERS, 8, 1, 10**9)) == 1


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_bucket_messages_fit_the_ring_channel(world, itemsize):
    """What a rank sends its right neighbour in a step, bucket by bucket, each message laid at
    a 64-byte boundary, is at most the capacity the memory model gives the ring channel of the
    whole buffer, for any layer sizes."""
    rng = np.random.default_rng(world * itemsize)
    for _ in range(20):
        layers = []
        for layer in range(int(rng.integers(1, 6)), 0, -1):
            layers += [(f"W{layer}", int(rng.integers(1, 3000)), layer)]
            layers += [(f"b{layer}", int(rng.integers(1, 40)), layer)]
        n = sum(s for _, s, _ in layers)
        bs = plan_buckets(layers, itemsize, world, int(rng.choice([0, 64, 4096])))
        for rank in range(world):
            used = 0
            for b in bs:
                chunks = ring_chunks(b.stop - b.start, world)
                for i in range(world - 1):  # reduce-scatter, then all-gather: what rank sends
                    for c in ((rank - i) % world, (rank + 1 - i) % world):
                        used += _padded((chunks[c].stop - chunks[c].start) * itemsize)
            assert used <= ring_channel_bytes(n * itemsize, world, itemsize)


def test_ready_hands_out_buckets_in_order_once_final():
    """A bucket is handed out when its parameters are final and every earlier one has been;
    rest() hands out what is left, once."""
    bs = plan_buckets(LAYERS, 8, 1, 0)
    r = Ready(bs)
    assert r.final("W4") == []
    assert [b.index for b in r.final("b4")] == [0]
    assert r.final("W2") == []  # bucket 2 waits for b3 and for bucket 1
    assert [b.index for b in r.final("b3")] == []
    assert [b.index for b in r.final("W3")] == [1, 2]
    assert r.rest() == []
    r = Ready(bs)
    assert [b.index for b in r.rest()] == [0, 1, 2]


def _steps(log: list, name: str, keys: list, fail: bool = False):
    """A bucket's steps: waits for `keys` in turn, logging what it got; returns 8 bytes."""

    def run():
        if fail:
            raise ValueError("chunk lost")
        for k in keys:
            a = yield k
            log.append((name, k, float(a[0])))
        return 8

    return run


def test_progress_runs_buckets_in_order_as_far_as_messages_came():
    """A bucket advances at `poll` only as far as its messages have arrived, the next one
    starts only once the one before ended; `drain` waits for the rest; traffic counted."""
    box: dict = {}
    log: list = []
    p = Progress(lambda k: k in box, lambda k: box.pop(k))
    p.submit(_steps(log, "b0", ["x", "y"]))
    p.submit(_steps(log, "b1", ["z"]))
    p.poll()
    assert log == []
    box["z"] = np.ones(1)  # b1's message first: b1 waits for b0
    box["x"] = np.full(1, 2.0)
    p.poll()
    assert log == [("b0", "x", 2.0)]
    box["y"] = np.full(1, 3.0)
    done = p.drain()
    assert log == [("b0", "x", 2.0), ("b0", "y", 3.0), ("b1", "z", 1.0)]
    assert len(done.spans) == 2 and done.spans[0].end <= done.spans[1].start + 1e-9
    assert (done.sent, done.received) == (16, 24)


def test_progress_skips_after_a_failure_and_raises_it_from_drain():
    """After a failing bucket the step's later ones are skipped; drain raises the failure;
    the next step starts clean; abandon drops a step's buckets unfinished."""
    box: dict = {"a": np.ones(1)}
    log: list = []
    p = Progress(lambda k: k in box, lambda k: box.pop(k))
    p.submit(_steps(log, "b0", [], fail=True))
    p.submit(_steps(log, "b1", ["a"]))
    with pytest.raises(ValueError, match="chunk lost"):
        p.drain()
    assert log == []
    p.submit(_steps(log, "b2", ["a"]))
    assert len(p.drain().spans) == 1 and log == [("b2", "a", 1.0)]
    p.submit(_steps(log, "b3", ["never"]))
    p.abandon()
    assert p.drain().spans == []


def test_exposed_is_what_outlasts_the_compute():
    """exposed_time: from the compute's end to the last span's end, 0 if all ended before;
    own_time: the spans' lengths; with every bucket handed over before the compute ended,
    the spans cover that stretch, so exposed <= own."""
    spans = [Span(1.0, 2.0), Span(2.0, 3.5)]
    assert own_time(spans) == 2.5
    assert exposed_time(spans, 3.0) == 0.5
    assert exposed_time(spans, 4.0) == 0.0
    box: dict = {}
    p = Progress(lambda k: k in box, lambda k: (time.sleep(0.01), np.ones(1))[1])
    for b in range(3):
        p.submit(_steps([], f"b{b}", [b]))
    compute_end = time.perf_counter()
    spans = p.drain().spans
    assert 0.0 < exposed_time(spans, compute_end) <= own_time(spans)


def test_critical_path_splits_a_replicas_wait_from_the_communication_after_the_last():
    """critical_path: per step, the communication after the latest compute end (on the
    replica that had it, with its own time and its work inside the backward) and the wait
    from the first compute end to the last; the replica that ends last may change from step
    to step; marks of different lengths are refused, naming them."""
    r0 = [ReduceMark(10.0, 13.0, 2.5, 0.25), ReduceMark(20.0, 21.0, 1.5, 0.5)]
    r1 = [ReduceMark(12.0, 13.2, 1.0, 0.75), ReduceMark(19.0, 21.25, 2.0, 0.125)]
    c = critical_path([r0, r1])
    assert c.steps == 2
    assert c.polled == pytest.approx(0.75 + 0.5)  # the last replica's work in its backward
    assert c.exposed == pytest.approx(1.2 + 1.25)  # 13.2 - 12, then 21.25 - 20
    assert c.own == pytest.approx(1.0 + 1.5)  # replica 1's, then replica 0's
    assert c.wait == pytest.approx(2.0 + 1.0)
    # a step whose buckets all ended before the last compute end exposed nothing
    assert critical_path([[ReduceMark(5.0, 4.0, 1.0)], [ReduceMark(3.0, 4.0, 1.0)]]).exposed == 0
    with pytest.raises(ValueError, match=r"different steps: \[1, 2\]"):
        critical_path([r0, r0[:1]])


@pytest.mark.parametrize("split", [False, True])
def test_grad_hook_fires_once_per_parameter_after_its_last_write(split):
    """Program.grad_hook is called after every call of a backward (B, or W after I) with the
    parameters that call finished: every parameter once, in the order of the weight-gradient
    calls (last layer first), its gradient already final for that backward."""
    g, p0, X, y = mlp_problem([5, 4, 3, 2], 4)
    prog = Program(g, p0, _numpy(), 4)
    seen: dict[str, np.ndarray] = {}
    calls: list[tuple[Final, ...]] = []

    def hook(done: tuple[Final, ...]) -> None:
        calls.append(done)
        for name, upto in done:
            assert upto == prog.grads[name].size  # no gradient in row blocks here
            seen.setdefault(name, prog.grads[name].copy())

    prog.grad_hook = hook
    prog.forward(0, X, y, 0.25)
    if split:
        prog.backward_input(0, None, 0.25)
        assert seen == {}
        prog.backward_weight(0, 0.25)
    else:
        prog.backward(0, None, 0.25)
    assert list(seen) == ["b3", "W3", "b2", "W2", "b1", "W1"]
    assert len(calls) == (6 if split else 11)  # after every call: B's I calls finish nothing
    for name, v in seen.items():
        assert np.array_equal(v, prog.grads[name])
    plain = Program(g, p0, _numpy(), 4)  # no hook: B runs I then W
    plain.forward(0, X, y, 0.25)
    plain.backward(0, None, 0.25)
    for name in seen:  # the hooked B's other order: the same gradients, bit for bit
        assert np.array_equal(plain.grads[name], prog.grads[name])
    prog.grad_hook = None


@pytest.mark.parametrize("split", [False, True])
def test_the_last_weight_gradient_in_row_blocks_is_final_block_by_block(split):
    """With split_bytes, the backward's last weight gradient (W1) runs in row blocks of at
    least that many bytes: the hook hears, after each block, that W1 is final up to its end
    (those rows already hold their final values), then W1 whole once; the gradients equal
    the unsplit program's to 1e-14; block_ends gives the blocks' ends; buckets planned with
    them close there, and Ready hands each out once its rows are final."""
    g, p0, X, y = mlp_problem([5, 8, 3, 2], 4)  # W1 8 x 5 float64: 320 bytes
    prog = Program(g, p0, _numpy(), 4, split_bytes=100)  # 3 blocks: rows 0-3, 3-6, 6-8
    assert prog.block_ends == {"W1": (15, 30)}
    heard: list[tuple[int, np.ndarray]] = []

    def hook(done: tuple[Final, ...]) -> None:
        heard.extend(
            (upto, prog.grads[name].ravel()[:upto].copy()) for name, upto in done if name == "W1"
        )

    prog.grad_hook = hook
    prog.forward(0, X, y, 0.25)
    if split:
        prog.backward_input(0, None, 0.25)
        prog.backward_weight(0, 0.25)
    else:
        prog.backward(0, None, 0.25)
    assert [u for u, _ in heard] == [15, 30, 40]
    for upto, rows in heard:  # final when told
        assert np.array_equal(rows, prog.grads["W1"].ravel()[:upto])
    plain = Program(g, p0, _numpy(), 4)
    plain.forward(0, X, y, 0.25)
    plain.backward(0, None, 0.25)
    assert max_rel(plain.get_grads(), prog.get_grads()) < 1e-14
    params = [(n, int(prog.grads[n].size), g.var(n).layer) for n in prog.grad_order]
    # the buffer: b3 W3 b2 W2 (0-35), b1 (35-43), W1 (43-83), its blocks ending at 58 and 73;
    # cuts move down to whole lines of 8 elements
    bs = plan_buckets(params, 8, 1, 100, prog.block_ends)
    assert [b.stop for b in bs] == [32, 56, 72, 83]
    assert bs[1].pieces[-1] == Piece("W1", 0, 13, 43)
    r = Ready(bs)
    assert [b.index for n in ("b3", "W3", "b2", "W2") for b in r.final(n)] == [0]
    assert r.final("b1") == [] and r.final("W1", 12) == []
    assert [b.index for b in r.final("W1", 15)] == [1]
    assert [b.index for b in r.final("W1", 30)] == [2]
    assert [b.index for b in r.final("W1")] == [3]


def _numpy():
    from workers.backends import get_backend

    return get_backend("cpu")


def test_a_failure_while_polled_is_raised_by_drain_not_by_poll():
    """A channel that fails while a poll checks it (inside the backward) is kept: poll
    returns, drain raises it, and the step's traffic is not carried into the next."""

    def broken(key):
        raise OSError("channel closed")

    p = Progress(broken, lambda k: np.ones(1))
    p.submit(_steps([], "b0", ["x"]))
    p.poll()
    with pytest.raises(OSError, match="channel closed"):
        p.drain()
    after = p.drain()  # the next step's round starts from nothing
    assert (after.spans, after.sent, after.received) == ([], 0, 0)
