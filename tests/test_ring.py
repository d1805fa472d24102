"""The ring all-reduce (workers/ring.py), without Ray: one thread per rank, inboxes as links.

Contract: for world sizes 1 to 5 and buffer lengths from 0 up, including lengths shorter than
the world (empty chunks), every rank ends with the elementwise sum of all ranks' buffers
(float64: within 1e-12 relative of np.sum; float32 too), bit-identical across ranks; world 1
leaves the buffer alone and sends nothing; each rank sends 2 (N-1)/N of the buffer, only to
its right neighbour, as 2-D arrays keyed (step, "F"|"B", -1 - phase) (ring_key: a negative
third field, so ring chunks never collide with a pipeline's micro-batch keys in one inbox); a
rank that fails stops its neighbour when told (Inbox.fail) instead of leaving it waiting.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from workers.push import Inbox, NeighbourFailed
from workers.ring import ring_allreduce, ring_chunks, ring_phase


def _run(bufs: list[np.ndarray], step: int = 1, fail_rank: int | None = None):
    """Each rank's ring_allreduce on its own thread; (bytes sent, messages sent, errors)."""
    world = len(bufs)
    inboxes = [Inbox() for _ in range(world)]
    sent = [0] * world
    messages: list[list[tuple]] = [[] for _ in range(world)]
    errors: list[BaseException | None] = [None] * world

    def run(r: int) -> None:
        right = (r + 1) % world

        def send(key, a):
            assert a.ndim == 2 and a.shape[0] == 1
            messages[r].append((key, a.shape[1]))
            if fail_rank == r:
                raise RuntimeError(f"rank {r} broke")
            inboxes[right].put(key, a.copy())

        def take(key):
            return inboxes[r].take(key, 10.0)

        try:
            sent[r] = ring_allreduce(bufs[r], r, world, step, send, take)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            errors[r] = e
            for peer in ((r - 1) % world, right):
                inboxes[peer].fail(step, str(e))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    return sent, messages, errors


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7, 10, 33, 1000])
def test_every_rank_gets_the_sum(world, n):
    rng = np.random.default_rng(world * 1000 + n)
    bufs = [rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3) for _ in range(world)]
    want = np.sum(np.stack(bufs), axis=0) if n else np.zeros(0)
    sent, messages, errors = _run(bufs)
    assert errors == [None] * world
    scale = max(float(np.max(np.abs(want))) if n else 0.0, 1e-300)
    for b in bufs:
        assert float(np.max(np.abs(b - want), initial=0.0)) / scale < 1e-12
        assert np.array_equal(b, bufs[0])  # bit-identical on every rank
    chunks = ring_chunks(n, world)
    for r in range(world):
        # everything but one chunk in each phase: 2 (N-1)/N of the buffer, give or take a chunk
        rs = n - (chunks[(r + 1) % world].stop - chunks[(r + 1) % world].start)
        ag = n - (chunks[(r + 2) % world].stop - chunks[(r + 2) % world].start)
        assert sent[r] == (rs + ag) * 8 if world > 1 else sent[r] == 0
        kinds = [k[1] for k, _ in messages[r]]
        assert kinds == sorted(kinds, key="FB".index)  # reduce-scatter, then all-gather
        assert all(k[0] == 1 and size > 0 for k, size in messages[r])  # no empty messages
        phases = [ring_phase(k) for k, _ in messages[r]]
        assert all(k[2] < 0 for k, _ in messages[r])  # never a micro-batch's key (0 and up)
        assert all(0 <= ph < world - 1 for ph in phases)


def test_float32_sums_and_agrees_across_ranks():
    rng = np.random.default_rng(7)
    bufs = [rng.standard_normal(101).astype(np.float32) for _ in range(3)]
    want = np.sum(np.stack(bufs).astype(np.float64), axis=0)
    _, _, errors = _run(bufs)
    assert errors == [None] * 3
    assert all(b.dtype == np.float32 and np.array_equal(b, bufs[0]) for b in bufs)
    assert float(np.max(np.abs(bufs[0] - want))) / float(np.max(np.abs(want))) < 1e-6


def test_world_one_is_a_no_op():
    buf = np.arange(5.0)
    calls = []
    sent = ring_allreduce(buf, 0, 1, 3, lambda k, a: calls.append(k), lambda k: calls.append(k))
    assert sent == 0 and calls == [] and np.array_equal(buf, np.arange(5.0))


def test_chunks_are_array_split_boundaries():
    for n in range(12):
        for world in range(1, 6):
            parts = np.array_split(np.arange(n), world)
            got = [np.arange(n)[s] for s in ring_chunks(n, world)]
            assert [p.tolist() for p in parts] == [g.tolist() for g in got]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="1-D"):
        ring_allreduce(np.zeros((2, 2)), 0, 2, 0, print, print)
    with pytest.raises(ValueError, match="rank 2 outside a ring of 2"):
        ring_allreduce(np.zeros(4), 2, 2, 0, print, print)


def test_a_failing_rank_stops_its_neighbours():
    bufs = [np.ones(12) for _ in range(4)]
    _, _, errors = _run(bufs, step=5, fail_rank=2)
    assert isinstance(errors[2], RuntimeError) and "rank 2 broke" in str(errors[2])
    stopped = [e for r, e in enumerate(errors) if r != 2]
    assert all(isinstance(e, NeighbourFailed) for e in stopped), errors
