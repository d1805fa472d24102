"""Pipelines on real Ray actors equal single-process training (the autodiff oracle).

Contract, for the Ray transports `push` (one call per stage a step, tensors pushed stage to
stage by actor calls) and `shm` (push, with shared-memory channels between neighbours on one
node), each behind graphpart.engines.Engine: for K in {1, 2, 3, 4} stages, M in {1, 2, 3, 4, 8}
micro-batches, both schedules and every distinct split the strategies produce, the parameters
after several optimizer steps equal the oracle (reference autodiff + reference optimizer) to
1e-10 relative in float64; a failure in any worker is re-raised with its stage and
micro-batch (on the push engine: that failure, not the neighbours' stops it caused); actors are
gone after close.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from functools import partial

import pytest
from conftest import max_rel, mlp_problem, oracle_training

from graphpart.autodiff import value_and_grad
from graphpart.engines import Engine
from graphpart.errors import StageFailure
from graphpart.optim import make_optimizer
from graphpart.plan.partition import partition

ENGINES = pytest.mark.parametrize(
    "engine",
    [partial(Engine, transport=t) for t in ("push", "shm")],
    ids=["push", "shm"],
)

SIZES = [6, 5, 7, 4, 3]
BATCH, STEPS = 8, 3


def _problem(seed: int = 0):
    return mlp_problem(SIZES, BATCH * STEPS, seed=seed)


def _oracle(g, p0, X, y, opt):
    return oracle_training(g, p0, X, y, opt, BATCH)[1]


@ENGINES
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_pipeline_equals_oracle(ray_session, k, engine):
    g, p0, X, y = _problem()
    opt = make_optimizer("adam", lr=0.05)
    want = _oracle(g, p0, X, y, opt)
    splits = {
        tuple(partition(g, k, s).sizes()): partition(g, k, s)
        for s in ("uniform", "balanced", "memory")
    }
    for plan in splits.values():
        with engine(plan, p0, opt, microbatches=1, max_rows=BATCH) as eng:
            initial = eng.get_state()
            for m in (1, 2, 3, 4, 8):
                for kind in ("gpipe", "1f1b"):
                    eng.set_state(initial)
                    eng.reschedule(kind, m)
                    for t in range(STEPS):
                        sl = slice(t * BATCH, (t + 1) * BATCH)
                        eng.step(X[sl], y[sl])
                    err = max_rel(want, eng.get_params())
                    assert err < 1e-10, (plan.sizes(), m, kind, err)


@ENGINES
def test_value_and_grad_through_actors(ray_session, engine):
    g, p0, X, y = _problem(1)
    J, grads = value_and_grad(g, p0, {"x": X[:BATCH], "y": y[:BATCH]})
    with engine(
        partition(g, 3), p0, make_optimizer("sgd", lr=0.1), microbatches=4, max_rows=BATCH
    ) as eng:
        J2, grads2 = eng.value_and_grad(X[:BATCH], y[:BATCH])
        assert abs(J - J2) / abs(J) < 1e-12
        assert max_rel(grads, grads2) < 1e-12
        # no update happened: parameters are still the initial ones
        assert max_rel(p0, eng.get_params()) == 0.0
        stats = eng.stats()
    assert [s.stage for s in stats] == [0, 1, 2]
    assert len({s.pid for s in stats}) == 3  # one process per stage
    assert stats[0].bytes_sent > 0 and stats[2].bytes_received > 0


@ENGINES
@pytest.mark.parametrize("k", [2, 3])
def test_worker_failure_names_stage_and_microbatch(ray_session, engine, k):
    g, p0, X, y = _problem(2)
    with engine(
        partition(g, k), p0, make_optimizer("sgd", lr=0.1), microbatches=2, max_rows=BATCH
    ) as eng:
        bad = y[:BATCH].copy()
        bad[-1] = 99  # a label out of range makes the last stage's loss kernel fail
        with pytest.raises(StageFailure, match=rf"stage {k - 1} .* micro-batch 1"):
            eng.step(X[:BATCH], bad)


@ENGINES
def test_actors_are_gone_after_close(ray_session, engine):
    import ray

    g, p0, _, _ = _problem(3)
    eng = engine(partition(g, 2), p0, make_optimizer("sgd", lr=0.1), max_rows=BATCH)
    handles = list(eng.transport.actors)
    assert ray.get(handles[0].info.remote())["pid"] > 0
    eng.close()
    for h in handles:  # ray.kill is asynchronous: the actor must be gone within a deadline
        deadline = time.time() + 30
        while True:
            try:
                ray.get(h.info.remote(), timeout=30)
            except ray.exceptions.RayActorError:
                break
            assert time.time() < deadline, "actor still alive 30 s after close()"
            time.sleep(0.2)


@ENGINES
def test_a_killed_stage_is_named_within_seconds(ray_session, engine):
    g, p0, X, y = _problem(4)
    eng = engine(partition(g, 2), p0, make_optimizer("sgd", lr=0.1), microbatches=2, max_rows=BATCH)
    try:
        eng.step(X[:BATCH], y[:BATCH])
        os.kill(eng.transport.info[1]["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(StageFailure, match=r"stage 1's worker process died"):
            eng.step(X[:BATCH], y[:BATCH])
        assert time.monotonic() - t0 < 30
    finally:
        eng.close()


@pytest.mark.parametrize("transport", ["push", "shm"])
def test_a_stopped_stage_is_named_within_the_step_deadline(ray_session, transport):
    """Liveness on every transport: kill -STOP one stage, and the next step ends with one line
    naming it once pipeline.step_timeout has passed, never a silent hang."""
    g, p0, X, y = _problem(5)
    eng = Engine(
        partition(g, 2),
        p0,
        make_optimizer("sgd", lr=0.1),
        microbatches=2,
        max_rows=BATCH,
        transport=transport,
        step_timeout=2.0,
    )
    pid = eng.transport.info[1]["pid"]
    try:
        for _ in range(3):  # a few ordinary steps first
            eng.step(X[:BATCH], y[:BATCH])
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        seen = r"stage 1 stopped answering: its process is stopped or gone \(seen by its "
        with pytest.raises(StageFailure, match=seen + r"process state (\d+\.\d) s into step") as e:
            eng.step(X[:BATCH], y[:BATCH])
        took = time.monotonic() - t0
        said = float(re.search(r"state (\d+\.\d) s into", str(e.value)).group(1))
        assert took < 30 and said <= took + 0.1  # the message says the time it took
    finally:
        with contextlib.suppress(ProcessLookupError):  # close() may have killed it already
            os.kill(pid, signal.SIGCONT)
        eng.close()


@pytest.mark.parametrize("starting", [False, True], ids=["running", "starting"])
def test_a_stopped_stage_ends_calls_outside_a_step_too(ray_session, starting):
    """Start-up, state and inference calls wait on stages too: a stopped local stage ends
    them at once with one line (its index, or its pid while the stages are still starting)
    instead of blocking forever."""
    g, p0, X, y = _problem(6)
    opt = make_optimizer("sgd", lr=0.1)
    eng = Engine(partition(g, 2), p0, opt, max_rows=BATCH, transport="push")
    t = eng.transport
    pid = t.info[1]["pid"]
    t.started = True  # the session's Ray stands in for one this transport started
    if starting:
        t.info = t.info[:1]  # as if stage 1 had not said who it is yet
    try:
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        who = f"pid {pid}" if starting else "stage 1"
        with pytest.raises(StageFailure, match=rf"{who} stopped answering: its process is stopped"):
            eng.get_state()
        assert time.monotonic() - t0 < 10
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        t.started = False  # the session's Ray is the session's to stop
        eng.close()
