"""The all-reduce overlapping the backward (issue 24 item 3): each worker all-reduces its
gradient buckets (workers/buckets.py) as soon as the step's last weight-gradient action has
written them, advancing them between that action's kernel calls while it goes on with the
earlier layers.

Contract: without Ray (StageWorkers on threads, rings of inboxes), for R = 2, 3 replicas and
M = 1, 2 micro-batches per replica, whole backwards (B) or split ones (I then W), several Adam
steps with the overlap give parameters bit-identical to the same buckets reduced after the
backward, and the oracle's to 1e-10 (float64); both report per step the all-reduce's own time
(Busy.allreduce) and the exposed part (Busy.exposed): exposed <= own with overlap, exposed ==
own (within bookkeeping) without. A failure inside one bucket's all-reduce is raised by that
worker's reduce_grads, and its peers, woken as the actor wakes them, raise NeighbourFailed at
once (no hang). With Ray, DataParallel(overlap=True) (the default) and overlap=False give
bit-identical parameters equal to the oracle at R = 2, K = 1 and R = 2, K = 2, both report
exposed and own all-reduce times per worker, and a replica failing inside a bucket's
all-reduce is named in a one-line StageFailure.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import max_rel, mlp_problem, oracle_training

from graphpart.engines import DataParallel
from graphpart.errors import StageFailure
from graphpart.optim import make_optimizer
from graphpart.plan.batching import split_batch
from graphpart.plan.partition import partition
from workers.buckets import Progress, critical_path
from workers.push import Inbox, NeighbourFailed
from workers.ring import ring_steps
from workers.stage import StageWorker

SIZES = [6, 5, 7, 4, 3]
BATCH, STEPS = 12, 3


def _adam():
    return make_optimizer("adam", lr=0.05, weight_decay=0.01)


def _ring(r: int, world: int, step: int, inboxes: list[Inbox], fail_bucket: int = -1):
    """Rank r's bucket all-reduce steps over a ring of inboxes (`fail_bucket`: raise there)."""
    right = inboxes[(r + 1) % world]

    def reduce(flat: np.ndarray, b: int):
        if b == fail_bucket:
            raise ValueError(f"bucket {b} lost")
        return ring_steps(
            flat, r, world, step, lambda key, a: right.put(key, a.copy()), b * (world - 1)
        )

    return reduce


def _progress(inbox: Inbox):
    return Recording(inbox.has, lambda key: inbox.take(key, 10.0))


def _train(R: int, M: int, overlap: bool, split: bool, seed: int = 3, bucket_bytes: int = 0):
    """Train R threaded replicas STEPS steps; their workers."""
    g, p0, X, y = mlp_problem(SIZES, BATCH * STEPS, seed=seed, weight_decay=0.05)
    ws = [
        StageWorker(
            g,
            p0,
            _adam(),
            output=None,
            input_grad=False,
            max_rows=BATCH,
            index=r,
            bucket_bytes=bucket_bytes,
            replicated=True,
        )
        for r in range(R)
    ]
    inboxes = [Inbox() for _ in range(R)]
    comms = [_progress(ib) for ib in inboxes]
    early = [0] * R  # buckets handed over before the backward's last call returned
    for step in range(1, STEPS + 1):
        xb, yb = X[(step - 1) * BATCH : step * BATCH], y[(step - 1) * BATCH : step * BATCH]
        errors: list[BaseException] = []

        def run(r: int, xb=xb, yb=yb, step=step, errors=errors) -> None:
            w, share = ws[r], split_batch(BATCH, R)[r]
            reduce = _ring(r, R, step, inboxes)
            try:
                mbs = [
                    slice(share.start + p.start, share.start + p.stop)
                    for p in split_batch(share.stop - share.start, M)
                ]
                for m, rows in enumerate(mbs):
                    w.forward(m, xb[rows], yb[rows], 1.0 / BATCH)
                for m in range(len(mbs)):
                    if split:
                        w.backward_input(m, None, 1.0 / BATCH)
                    if overlap and m == len(mbs) - 1:
                        w.arm_reduce(reduce, R, comms[r])
                    if split:
                        w.backward_weight(m, 1.0 / BATCH)
                    else:
                        w.backward(m, None, 1.0 / BATCH)
                returned = time.perf_counter()  # the backward's last call has returned
                early[r] += sum(t < returned for t in comms[r].handed)
                w.reduce_grads(reduce, R, comms[r])
                comms[r].handed.clear()
                w.finish(True)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(r,)) for r in range(R)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
    return ws, early, (g, p0, X, y)


class Recording(Progress):
    """A Progress that notes when each bucket was handed to it."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.handed: list[float] = []

    def submit(self, job) -> None:
        self.handed.append(time.perf_counter())
        super().submit(job)


@pytest.mark.parametrize(("R", "M", "split"), [(2, 1, False), (3, 2, True), (2, 2, False)])
def test_the_first_layers_weight_gradient_in_row_blocks(R, M, split):
    """A replica (replicated=True) with buckets of 80 bytes computes its last weight gradient
    (W1, 240 bytes) in 3 row blocks, and its buckets close inside W1 as its blocks end: with
    overlap the buckets of its first blocks are handed over before the backward's last call
    returns; on and off bit-identical, the oracle's to 1e-10."""
    on, early, (g, p0, X, y) = _train(R, M, overlap=True, split=split, bucket_bytes=80)
    off, none, _ = _train(R, M, overlap=False, split=split, bucket_bytes=80)
    assert on[0].prog.block_ends == {"W1": (12, 24)}
    bs = on[0].buckets(R)
    w1 = [b.index for b in bs if "W1" in b.params]
    assert len(w1) >= 2  # W1's rows in more than one bucket
    assert early == [len(bs) * STEPS] * R and none == [0] * R
    _, want = oracle_training(g, p0, X, y, _adam(), BATCH)
    for a, b in zip(on, off, strict=True):
        pa, pb = a.get_params(), b.get_params()
        assert all(np.array_equal(pa[k], pb[k]) for k in pa)
        assert all(np.array_equal(pa[k], on[0].get_params()[k]) for k in pa)
        assert max_rel(want, pa) < 1e-10


@pytest.mark.parametrize(("R", "M", "split"), [(2, 1, False), (3, 2, True)])
def test_overlap_is_bit_identical_and_equals_the_oracle(R, M, split):
    """Overlapped and after-the-backward all-reduces of the same buckets give bit-identical
    parameters on every replica, the oracle's to 1e-10; with overlap every bucket is handed to
    Progress before the backward's last call returns; exposed <= own time with overlap,
    exposed ~ own without; one all-reduce counted a step."""
    on, early, (g, p0, X, y) = _train(R, M, overlap=True, split=split)
    off, none, _ = _train(R, M, overlap=False, split=split)
    # every bucket handed over inside the backward: 4 a step (a bucket a layer)
    assert early == [4 * STEPS] * R and none == [0] * R
    _, want = oracle_training(g, p0, X, y, _adam(), BATCH)
    # a bucket a layer (bucket_bytes=0): each gradient on its own 64-byte lines, cuts aligned
    assert len(on[0].buckets(R)) == len(SIZES) - 1
    for a, b in zip(on, off, strict=True):
        pa, pb = a.get_params(), b.get_params()
        assert all(np.array_equal(pa[k], pb[k]) for k in pa)
        assert all(np.array_equal(pa[k], on[0].get_params()[k]) for k in pa)
        assert max_rel(want, pa) < 1e-10
    for w in on:
        assert w.busy.reductions == STEPS
        assert 0.0 <= w.busy.exposed <= w.busy.allreduce
        # a mark a step, whose own times add up to Busy.allreduce
        marks = w.stats().reduce_marks
        assert len(marks) == STEPS
        assert sum(m.own for m in marks) == pytest.approx(w.busy.allreduce)
        assert sum(m.polled for m in marks) == pytest.approx(w.busy.polled)
    assert all(m.polled == 0 for w in off for m in w.stats().reduce_marks)
    crit = critical_path([w.stats().reduce_marks for w in on])
    # after the last compute, at most what the replicas waited for together
    assert crit.steps == STEPS and 0.0 <= crit.exposed <= sum(w.busy.exposed for w in on)
    for w in off:
        assert w.busy.reductions == STEPS
        assert w.busy.allreduce <= w.busy.exposed <= w.busy.allreduce + 0.05


def test_a_failed_bucket_is_raised_and_wakes_the_ring():
    """Replica 1 fails in bucket 1's all-reduce: its reduce_grads raises that error; replica 0,
    waiting in its drain for bucket 1's chunk, is woken by the abort (inbox.fail, which
    the failing actor calls on its peers)
    and raises NeighbourFailed within a second; its Progress is free for the next step."""
    R, step = 2, 1
    g, p0, X, y = mlp_problem(SIZES, BATCH, seed=4)
    ws = [
        StageWorker(g, p0, _adam(), output=None, input_grad=False, max_rows=BATCH, bucket_bytes=0)
        for _ in range(R)
    ]
    inboxes = [Inbox() for _ in range(R)]
    comms = [_progress(ib) for ib in inboxes]
    raised: dict[int, BaseException] = {}

    def run(r: int) -> None:
        w, rows = ws[r], split_batch(BATCH, R)[r]
        reduce = _ring(r, R, step, inboxes, fail_bucket=1 if r == 1 else -1)
        w.forward(0, X[rows], y[rows], 1.0 / BATCH)
        w.arm_reduce(reduce, R, comms[r])
        w.backward(0, None, 1.0 / BATCH)
        try:
            w.reduce_grads(reduce, R, comms[r])
        except BaseException as e:  # noqa: BLE001 - checked below
            raised[r] = e
            for ib in inboxes:  # what ReplicaActor does: abort its own inbox and its peers'
                ib.fail(step, f"replica {r}: {e}")
            w.disarm_reduce()

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(r,)) for r in range(R)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert time.monotonic() - t0 < 5
    assert isinstance(raised[1], ValueError) and "bucket 1 lost" in str(raised[1])
    assert isinstance(raised[0], NeighbourFailed) and "bucket 1 lost" in str(raised[0])
    comms[0].abandon()

    def nothing():
        return 0
        yield  # a generator: a bucket with no message to wait for

    comms[0].submit(nothing)
    assert len(comms[0].drain().spans) == 1


# -- with Ray ---------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [1, 2])
def test_ray_overlap_on_and_off_equal_the_oracle(ray_session, K):
    """DataParallel with set_overlap(True), then set_overlap(False) on the same workers
    from the same state: bit-identical parameters, the oracle's to 1e-10 (R = 2, M = 2,
    float64, per-layer buckets); every worker reports per step the all-reduce's own time and
    its exposed part, exposed <= own with overlap and >= own without."""
    g, p0, X, y = mlp_problem(SIZES, BATCH * STEPS, seed=5, weight_decay=0.05)
    _, want = oracle_training(g, p0, X, y, _adam(), BATCH)
    got = {}
    with DataParallel(
        partition(g, K), p0, _adam(), replicas=2, microbatches=2, max_rows=BATCH, bucket_bytes=0
    ) as dp:
        start = dp.get_state()
        for overlap in (True, False):
            dp.set_overlap(overlap)
            dp.set_state(start)
            assert dp.overlap is overlap
            before = [s.busy for s in dp.stats()]
            for t in range(STEPS):
                dp.step(X[t * BATCH : (t + 1) * BATCH], y[t * BATCH : (t + 1) * BATCH])
            got[overlap] = dp.get_params()
            for b0, s in zip(before, dp.stats(), strict=True):
                own, exposed = s.busy.allreduce - b0.allreduce, s.busy.exposed - b0.exposed
                assert s.busy.reductions - b0.reductions == STEPS and own > 0.0
                assert exposed <= own if overlap else own <= exposed
    assert all(np.array_equal(got[True][k], got[False][k]) for k in want)
    assert max_rel(want, got[True]) < 1e-10


def test_ray_a_failure_inside_a_bucket_is_named(ray_session):
    """Replicas cut into different buckets (replica 1: one bucket, replica 0: a bucket a
    layer): a bucket's chunks do not match and the step fails inside the overlapped
    all-reduce, named in one line ("replica r (...) failed in the gradient all-reduce"), the
    other replica woken within seconds, not left waiting for chunks that never come."""
    g, p0, X, y = mlp_problem(SIZES, BATCH, seed=6)
    with DataParallel(
        partition(g, 1), p0, _adam(), replicas=2, max_rows=BATCH, bucket_bytes=0
    ) as dp:
        dp.transport.get([dp.transport.call(1, "set_bucket_bytes", 10**9)])
        t0 = time.monotonic()
        with pytest.raises(
            StageFailure, match=r"^replica [01] \(.*\) failed in the gradient all-reduce: "
        ) as e:
            dp.step(X, y)
        assert "\n" not in str(e.value)
        assert time.monotonic() - t0 < 10
