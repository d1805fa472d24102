"""Data parallelism (graphpart.engines.DataParallel): K replicas of the whole model, each on
its rows of every minibatch, gradients summed by a ring all-reduce before each optimizer step.

Contract: in float64, with K = 2 and 3 replicas and both transports ("shm": channels between
replicas on one node, at K = 2 and 3; "push": Ray deliveries, at K = 3), several Adam steps with
weight decay give the same J, L, s and parameters (1e-10 relative) as a one-stage Engine with K
micro-batches on the same batches (split_batch(B, K) is its micro-batch split) and as the oracle,
and every replica holds bit-identical parameters; each replica's ledger holds no all-reduce buffer
(the ring sums the gradients' own buffer, Program.flat_grads, in place) and equals the memory
model's prediction (predict_data_parallel) buffer by buffer; value_and_grad equals the autodiff
oracle and leaves the parameters alone; checkpoints move both ways between DataParallel and a
one-stage Engine; a failing replica is named in a one-line StageFailure, and a killed replica too,
within seconds, never a hang; close() leaves no channel file (/dev/shm/graphpart-*). Without Ray,
StageWorkers on threads joined by inboxes (reduce_grads over workers/ring.py) equal the same Engine,
and bad arguments are refused with a ConfigError naming the value (as are CUDA replicas on a cluster
with fewer GPUs than replicas, instead of waiting for ever).

With M micro-batches per replica (gradient accumulation inside each replica: its share cut
by replica_rows, a share of fewer rows than M run one micro-batch per row), K = 1, 2, 3 and
M = 1, 2, 4 give the oracle's J and parameters (float64, 1e-10), a short last minibatch
included; the ledger of a replica with M = 2 holds micro-batch buffers of
ceil(ceil(B / K) / M) rows, buffer by buffer what the memory model gives for them.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from conftest import batches, max_rel, mlp_problem, oracle_training, rel_err

from graphpart.autodiff import value_and_grad
from graphpart.engines import DataParallel, Engine
from graphpart.engines.data_parallel import replica_rows
from graphpart.errors import ConfigError, PlanError, StageFailure
from graphpart.ir.sizes import ALIGN, allocated
from graphpart.optim import make_optimizer
from graphpart.plan.batching import split_batch
from graphpart.plan.memory import StageMemory, Workload, predict, predict_data_parallel
from graphpart.plan.partition import partition
from workers.buckets import Progress
from workers.push import Inbox
from workers.ring import ring_steps
from workers.stage import StageWorker

SIZES = [6, 5, 7, 4, 3]
BATCH, STEPS = 9, 3  # 9 rows: the replicas' shares differ in size for K = 2


def _problem(seed: int = 0):
    return mlp_problem(SIZES, BATCH * STEPS, seed=seed, weight_decay=0.05)


def _adam():
    return make_optimizer("adam", lr=0.05, weight_decay=0.01)


def _batches(X, y):
    return [(X[t * BATCH : (t + 1) * BATCH], y[t * BATCH : (t + 1) * BATCH]) for t in range(STEPS)]


def _reference(g, p0, X, y, k):
    """Each step's result and the final parameters of a one-stage in-process Engine with K
    micro-batches."""
    with Engine(
        partition(g, 1), p0, _adam(), transport="inprocess", microbatches=k, max_rows=BATCH
    ) as eng:
        Js = [eng.step(xb, yb) for xb, yb in _batches(X, y)]
        return Js, eng.get_params()


def _channel_files(dp: DataParallel) -> set[str]:
    """The files of this engine's own ring channels (other tests' may come and go beside)."""
    return {f for n in dp.transport.channels for f in (n.data, n.fifo)}


def _existing(files: set[str]) -> set[str]:
    return {f for f in files if os.path.exists(f)}


# -- without Ray ----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3])
def test_workers_joined_by_a_ring_equal_micro_batching(k):
    """StageWorkers on threads: forward/backward of their rows, reduce_grads over a ring of
    inboxes, finish; the same parameters as the one-stage Engine with K micro-batches."""
    g, p0, X, y = _problem(1)
    _, want = _reference(g, p0, X, y, k)
    ws = [
        StageWorker(g, p0, _adam(), output=None, input_grad=False, max_rows=BATCH, index=r)
        for r in range(k)
    ]
    inboxes = [Inbox() for _ in range(k)]
    for step, (xb, yb) in enumerate(_batches(X, y), start=1):
        rows = split_batch(len(xb), k)
        errors: list[BaseException] = []

        def run(r: int, xb=xb, yb=yb, rows=rows, step=step, errors=errors) -> None:
            w, right = ws[r], inboxes[(r + 1) % k]
            try:
                w.forward(0, xb[rows[r]], yb[rows[r]], 1.0 / len(xb))
                w.backward(0, None, 1.0 / len(xb))
                w.reduce_grads(
                    lambda flat, b: ring_steps(
                        flat, r, k, step, lambda key, a: right.put(key, a.copy()), b * (k - 1)
                    ),
                    k,
                    Progress(inboxes[r].has, lambda key: inboxes[r].take(key, 10.0)),
                )
                w.finish(True)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(r,)) for r in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
    for w in ws:
        assert max_rel(want, w.get_params()) < 1e-10
        assert np.array_equal(w.get_params()["W1"], ws[0].get_params()["W1"])
        assert "allreduce" not in w.ledger.entries  # summed in the gradients' own buffer
        assert w._flat is w.prog.flat_grads
        # the gradients end to end, each on a 64-byte line: what their ledger entries add up to
        assert w.prog.flat_grads.nbytes == sum(allocated(v.nbytes) for v in p0.values()) - ALIGN
        assert all(v.ctypes.data % ALIGN == 0 for v in w.prog.grads.values())
        assert w.busy.allreduce > 0.0


def test_bad_arguments_are_refused_before_ray_starts():
    g, p0, _, _ = _problem()
    opt = _adam()
    with pytest.raises(ConfigError, match=r"schedule='zigzag'; valid: gpipe, 1f1b"):
        DataParallel(partition(g, 2), p0, opt, replicas=2, schedule="zigzag", max_rows=BATCH)
    with pytest.raises(ConfigError, match=r"schedule='zbv' \(virtual stages do not run data"):
        DataParallel(partition(g, 2), p0, opt, replicas=2, schedule="zbv", max_rows=BATCH)
    with pytest.raises(ConfigError, match=r"transport='inprocess'.*valid: auto, shm, push$"):
        DataParallel(partition(g, 1), p0, opt, replicas=2, transport="inprocess", max_rows=BATCH)
    with pytest.raises(ConfigError, match=r"transport='tasks'.*valid: auto, shm, push; tasks was"):
        DataParallel(partition(g, 1), p0, opt, replicas=2, transport="tasks", max_rows=BATCH)
    with pytest.raises(ConfigError, match="replicas=0"):
        DataParallel(partition(g, 1), p0, opt, replicas=0, max_rows=BATCH)
    with pytest.raises(ConfigError, match=r"microbatches=0: must be a positive integer"):
        DataParallel(partition(g, 1), p0, opt, replicas=2, microbatches=0, max_rows=BATCH)


@pytest.mark.parametrize(
    ("n", "k", "m"), [(13, 1, 4), (13, 2, 4), (13, 3, 2), (3, 2, 4), (9, 3, 1)]
)
def test_replica_rows_cut_each_share_into_its_micro_batches(n, k, m):
    """replica_rows(n, K, M): replica r's micro-batches tile split_batch(n, K)[r] in order, as
    split_batch(its rows, min(M, its rows)) cuts it (a share of fewer rows than M: one
    micro-batch per row, as Engine runs a minibatch of fewer rows than its micro-batches)."""
    rows = replica_rows(n, k, m)
    for share, mbs in zip(split_batch(n, k), rows, strict=True):
        size = share.stop - share.start
        assert len(mbs) == min(m, size)
        assert [(s.start - share.start, s.stop - share.start) for s in mbs] == [
            (s.start, s.stop) for s in split_batch(size, min(m, size))
        ]


# -- on Ray ---------------------------------------------------------------------------------------
def _replica_memory(k: int, m: int, channels: bool) -> StageMemory:
    """A replica's predicted buffers with M micro-batches: the one-stage model's at
    ceil(ceil(B / K) / M) rows a micro-batch, plus what predict_data_parallel adds (the
    all-reduce workspace, the ring's channels), which does not depend on M. (What
    predict_data_parallel itself gives once it reads the workload's micro-batches.)"""
    plan, adam = partition(_problem()[0], 1), _adam()
    extra = predict_data_parallel(
        plan, k, Workload(batch=BATCH, optimizer=adam, dtype="float64"), channels=channels
    ).stages[0]
    share = Workload(batch=-(-BATCH // k), microbatches=m, optimizer=adam, dtype="float64")
    one = predict(plan, share).stages[0]
    names = {b.name for b in one.buffers}
    return StageMemory(
        0,
        one.rows,
        one.in_flight,
        one.buffers + tuple(b for b in extra.buffers if b.name not in names),
    )


# push at K = 3 covers what push at K = 2 would (every chunk through Ray), at one start-up less;
# M = 2 micro-batches per replica at K = 3 (shares of 3 rows: micro-batches of 2 and 1 rows)
@pytest.mark.parametrize(("transport", "k", "m"), [("shm", 2, 1), ("shm", 3, 2), ("push", 3, 1)])
def test_replicas_train_like_one_stage_with_k_microbatches(ray_session, transport, k, m):
    """K replicas of M micro-batches each train like a one-stage Engine with K micro-batches
    and like the oracle (1e-10), bit-identical replicas, each replica's ledger the memory
    model's prediction buffer by buffer (micro-batch buffers of ceil(ceil(B / K) / M) rows),
    and close() removes the channel files."""
    g, p0, X, y = _problem()
    want_Js, want = _reference(g, p0, X, y, k)
    oracle_Js, oracle = oracle_training(g, p0, X, y, _adam(), BATCH)
    dp = DataParallel(
        partition(g, 1),
        p0,
        _adam(),
        replicas=k,
        microbatches=m,
        transport=transport,
        max_rows=BATCH,
    )
    files = _channel_files(dp)
    try:
        assert (dp.replicas, dp.microbatches, dp.kind) == (k, m, "data-parallel")
        assert dp.share == -(-BATCH // k)  # rows of a replica's share: ceil(B / K)
        assert dp.chunk == -(-dp.share // m)  # rows its micro-batch buffers hold
        if transport == "shm":
            assert (
                len(_existing(files)) == 4 * k
            )  # a ring and a feed channel (2 files each) per replica
        for (xb, yb), want_J, oracle_J in zip(_batches(X, y), want_Js, oracle_Js, strict=True):
            r = dp.step(xb, yb)
            assert rel_err(r.J, want_J.J) < 1e-12 and rel_err(r.J, oracle_J) < 1e-12
            assert rel_err(r.L, want_J.L) < 1e-12 and rel_err(r.s, want_J.s) < 1e-12
        got = dp.get_params()
        assert max_rel(want, got) < 1e-10
        assert max_rel(oracle, got) < 1e-10
        every = dp._all("get_params")
        assert all(np.array_equal(p[n], got[n]) for p in every for n in got)  # bit-identical
        stats = dp.stats()
        assert [s.stage for s in stats] == list(range(k))
        assert len({s.pid for s in stats}) == k
        param_bytes = sum(allocated(v.nbytes) for v in p0.values())  # each 64-byte aligned
        # the ring's shared-memory channels on shm
        pred = predict_data_parallel(
            partition(g, 1),
            k,
            Workload(batch=BATCH, optimizer=_adam(), dtype="float64"),
            channels=transport == "shm",
        )
        for s in stats:
            assert "allreduce" not in s.memory.entries  # the gradients are the ring's buffer
            assert s.memory.peak["gradient"] == param_bytes
            # the memory model, buffer by buffer
            want_mem = pred.stages[s.stage] if m == 1 else _replica_memory(k, m, transport == "shm")
            assert dict(s.memory.entries) == want_mem.entries()
            assert dict(s.memory.peak) == want_mem.bytes and s.memory.peak_total == want_mem.total
            assert s.busy.allreduce > 0.0
            assert s.bytes_sent > 0 and s.bytes_received > 0
        assert sum(s.bytes_sent for s in stats) == sum(s.bytes_received for s in stats)
        if m > 1:  # buffers of ceil(3 / 2) = 2 rows cannot take a share of 3 as one
            with pytest.raises(
                PlanError, match=r"microbatches=1: .* up to 3 rows, more than the 2"
            ):
                dp.reschedule(1)
    finally:
        dp.close()
    assert not _existing(files)  # close removed every channel file


ACC_BATCH = 13  # full minibatches: every replica's share (4 to 13 rows) holds M = 4 micro-batches
ACC_LAST = 3  # the epoch's short last minibatch: every share (1 to 3 rows) is smaller than M = 4


@pytest.mark.parametrize("k", [1, 2, 3])
def test_replicas_accumulating_micro_batches_train_like_the_oracle(ray_session, k):
    """K replicas each running its share of every minibatch as M = 1, 2, 4 micro-batches
    (gradients accumulated, then one all-reduce and one update) give the oracle's J at every
    step (1e-12) and its parameters (1e-10) in float64 after Adam steps with weight decay,
    the replicas bit-identical; a share of fewer rows than M (the short last minibatch) runs
    one micro-batch per row. One engine per K, rescheduled to each M and reset to its start."""
    g, p0, X, y = mlp_problem(SIZES, 2 * ACC_BATCH + ACC_LAST, seed=5, weight_decay=0.05)
    oracle_Js, oracle = oracle_training(g, p0, X, y, _adam(), ACC_BATCH)
    assert max(len(mbs) for mbs in replica_rows(ACC_LAST, k, 4)) < 4  # the short shares
    with DataParallel(
        partition(g, 1), p0, _adam(), replicas=k, max_rows=ACC_BATCH, bucket_bytes=0
    ) as dp:  # a bucket a layer, all-reduced while the backward runs (the default overlap)
        start = dp.get_state()
        for m in (1, 2, 4):
            dp.set_state(start)
            dp.reschedule(m)
            for (xb, yb), J in zip(batches(X, y, ACC_BATCH), oracle_Js, strict=True):
                assert rel_err(dp.step(xb, yb).J, J) < 1e-12, (m, len(xb))
            got = dp.get_params()
            assert max_rel(oracle, got) < 1e-10, m
            every = dp._all("get_params")
            assert all(np.array_equal(p[n], got[n]) for p in every for n in got)


def test_value_and_grad_predict_and_checkpoints_move_to_and_from_an_engine(ray_session):
    g, p0, X, y = _problem(2)
    xb, yb = X[:BATCH], y[:BATCH]
    J, grads = value_and_grad(g, p0, {"x": xb, "y": yb})
    plan = partition(g, 1)
    with (
        DataParallel(plan, p0, _adam(), replicas=2, max_rows=BATCH) as dp,
        Engine(plan, p0, _adam(), microbatches=2, max_rows=BATCH) as eng,
    ):
        J2, grads2 = dp.value_and_grad(xb, yb)
        assert rel_err(J2, J) < 1e-12 and max_rel(grads, grads2) < 1e-12
        assert max_rel(p0, dp.get_params()) == 0.0  # no update
        (xa, ya), (xc, yc) = _batches(X, y)[:2]
        dp.step(xa, ya)
        state = dp.get_state()
        assert len(state) == 1 and state[0]["steps"] == 1
        eng.set_state(state)  # a data-parallel checkpoint into a one-stage engine
        assert max_rel(dp.get_params(), eng.get_params()) == 0.0
        assert dp.predict(X).shape == (len(X), SIZES[-1])
        assert rel_err(dp.predict(X, chunk=2), eng.predict(X)) < 1e-12
        eng.step(xc, yc)
        dp.set_state(eng.get_state())  # and back, into every replica
        assert all(max_rel(eng.get_params(), p) == 0.0 for p in dp._all("get_params"))
        dp.step(xa, ya)
        eng.step(xa, ya)
        assert max_rel(eng.get_params(), dp.get_params()) < 1e-10
        with pytest.raises(PlanError, match="cannot feed 2 data-parallel replicas"):
            dp.step(X[:1], y[:1])


def test_a_failing_replica_is_named(ray_session):
    g, p0, X, y = _problem(3)
    with DataParallel(partition(g, 1), p0, _adam(), replicas=2, max_rows=BATCH) as dp:
        bad = y[:BATCH].copy()
        bad[-1] = 99  # out of range: the last replica's loss kernel fails
        t0 = time.monotonic()
        with pytest.raises(
            StageFailure, match=r"^replica 1 \(.*\) failed in forward of micro"
        ) as e:
            dp.step(X[:BATCH], bad)
        assert "\n" not in str(e.value)
        assert time.monotonic() - t0 < 10  # replica 0, waiting in the ring, was told to stop


def test_a_killed_replica_is_named_within_seconds(ray_session):
    g, p0, X, y = _problem(4)
    dp = DataParallel(partition(g, 1), p0, _adam(), replicas=2, max_rows=BATCH)
    files = _channel_files(dp)
    try:
        dp.step(X[:BATCH], y[:BATCH])
        os.kill(dp.transport.info[1]["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(StageFailure, match=r"^replica 1's worker process died") as e:
            dp.step(X[:BATCH], y[:BATCH])
        assert "\n" not in str(e.value)
        assert time.monotonic() - t0 < 10
    finally:
        dp.close()
    assert files and not _existing(files)


def test_cuda_replicas_without_a_gpu_each_are_refused_not_left_waiting(ray_session):
    g, p0, _, _ = _problem()
    gpus = ray_session.cluster_resources().get("GPU", 0.0)
    with pytest.raises(ConfigError, match="needs a GPU per replica"):
        DataParallel(
            partition(g, 1), p0, _adam(), replicas=int(gpus) + 1, max_rows=BATCH, device="cuda"
        )
