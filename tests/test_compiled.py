"""The `compiled` transport trains exactly like `tasks`, fails like it, and leaves no actor behind.

Contract: for K in {2, 3} stages, M in {1, 3, 4} micro-batches and both schedules (three of the
six pairs per K, every M and both kinds covered), after several steps on one engine (the first
of each schedule through ordinary tasks, the rest through a compiled graph, recompiled at every
change) the objective of every step and the final parameters equal the tasks transport's / the
in-process engine's (same arithmetic) to 1e-12 relative and the oracle's to 1e-10, in float64,
and the compiled graph really ran those steps; when the graph cannot be built the engine keeps
training through ordinary tasks with the same results and records why; a stage failing inside a
compiled step is re-raised as StageFailure naming its stage and micro-batch; after close() no
actor the engine started (stage actors, Ray's compiled-graph helper) is alive.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import pytest
from conftest import batches, max_rel, mlp_problem, oracle_training

from graphpart.engines import Engine
from graphpart.engines.transports.compiled import Compiled
from graphpart.errors import StageFailure
from graphpart.optim import make_optimizer
from graphpart.plan.partition import partition

TasksEngine = partial(Engine, transport="tasks")
CompiledEngine = partial(Engine, transport="compiled")
SIZES = [6, 5, 7, 4, 3]
BATCH, STEPS = 8, 4
COMBOS = {2: [(1, "gpipe"), (3, "1f1b"), (4, "gpipe")], 3: [(1, "1f1b"), (3, "gpipe"), (4, "1f1b")]}


def _problem(seed: int = 0):
    return mlp_problem(SIZES, BATCH * STEPS, seed=seed)


def _batches(X, y):
    return batches(X, y, BATCH)


def _oracle(g, p0, X, y, opt):
    return oracle_training(g, p0, X, y, opt, BATCH)[1]


def _run(eng, X, y, kind: str, m: int, initial) -> tuple[list[float], dict]:
    eng.set_state(initial)
    eng.reschedule(kind, m)
    losses = [eng.step(xb, yb).J for xb, yb in _batches(X, y)]
    return losses, eng.get_params()


@pytest.mark.parametrize("k", [2, 3])
def test_compiled_equals_ray_engine_and_oracle(ray_session, k):
    g, p0, X, y = _problem()
    opt = make_optimizer("adam", lr=0.05)
    plan = partition(g, k, "balanced")
    want = _oracle(g, p0, X, y, opt)
    reference = {}
    if k == 2:  # the engine it replaces, run first (both at once would need more cores)
        with TasksEngine(plan, p0, opt, max_rows=BATCH) as ray_eng:
            initial = ray_eng.get_state()
            for m, kind in COMBOS[k]:
                reference[m, kind] = _run(ray_eng, X, y, kind, m, initial)
    else:  # same stage workers in this process: the same arithmetic, without more actors
        for m, kind in COMBOS[k]:
            local = Engine(plan, p0, opt, microbatches=m, schedule=kind, max_rows=BATCH)
            reference[m, kind] = _run(local, X, y, kind, m, local.get_state())
    with CompiledEngine(plan, p0, opt, max_rows=BATCH) as eng:
        tr = eng.transport
        initial = eng.get_state()
        for m, kind in COMBOS[k]:
            before = tr.compiled_steps
            losses, params = _run(eng, X, y, kind, m, initial)
            assert tr.compile_errors == {}
            assert tr.compiled_steps - before == STEPS - 1, (m, kind)  # all but the first
            ref_losses, ref_params = reference[m, kind]
            np.testing.assert_allclose(losses, ref_losses, rtol=1e-12, atol=0)
            assert max_rel(ref_params, params) <= 1e-12, (m, kind)
            assert max_rel(want, params) < 1e-10, (m, kind)


def _live_actor_ids(ray) -> set[str]:
    """Actors not yet DEAD: alive, or still being created (Ray starts actors asynchronously)."""
    return {aid for aid, a in ray._private.state.actors().items() if a["State"] != "DEAD"}


def _cannot_build(wiring):
    raise ValueError("no graph today")


def test_fallback_then_stage_failure_in_compiled_step_then_close_leaves_no_actors(
    ray_session, monkeypatch
):
    ray = ray_session
    g, p0, X, y = _problem(2)
    opt = make_optimizer("sgd", lr=0.1)
    plan = partition(g, 2)
    before = _live_actor_ids(ray)
    eng = CompiledEngine(plan, p0, opt, microbatches=2, max_rows=BATCH)
    tr = eng.transport
    try:
        local = Engine(plan, p0, opt, microbatches=2, max_rows=BATCH)
        monkeypatch.setattr(tr, "_build", _cannot_build)
        for xb, yb in _batches(X, y)[:3]:
            assert eng.step(xb, yb).J == local.step(xb, yb).J
        assert tr.compiled_steps == 0
        assert "no graph today" in next(iter(tr.compile_errors.values()))
        assert max_rel(local.get_params(), eng.get_params()) == 0.0
        monkeypatch.undo()
        tr.compile_errors.clear()
        xb, yb = X[:BATCH], y[:BATCH]
        eng.step(xb, yb)  # the shape was seen before: this step compiles and runs the graph
        assert tr.compiled_steps == 1
        proxy = tr._dag._proxy_actor._actor_id.hex()  # the compiled graph's driver-side helper
        ours = {a._actor_id.hex() for a in tr.actors} | {proxy}
        deadline = time.monotonic() + 30  # registration with Ray's GCS is asynchronous too
        while not ours <= _live_actor_ids(ray) and time.monotonic() < deadline:
            time.sleep(0.1)
        started = _live_actor_ids(ray) - before
        assert ours <= started
        bad = yb.copy()
        bad[-1] = 99  # a label out of range makes the last stage's loss kernel fail
        with pytest.raises(StageFailure, match=r"stage 1 .* micro-batch 1"):
            eng.step(xb, bad)
        assert tr.compiled_steps == 1
        handles = list(tr.actors)
    finally:
        eng.close()
    assert tr.actors == []
    deadline = time.monotonic() + 30  # ray.kill is asynchronous: allow it to land
    while _live_actor_ids(ray) & started and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _live_actor_ids(ray) & started
    for h in handles:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(h.info.remote(), timeout=30)


class _Actor:
    def __init__(self, i: int) -> None:
        self._actor_id = i


class _Task:
    def __init__(self, bind_index: int) -> None:
        self.bind_index = bind_index


class _Graph:
    def __init__(self, schedules: dict, tasks: dict) -> None:
        self.actor_to_execution_schedule = schedules
        self.actor_to_executable_tasks = tasks


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_order_check_refuses_a_schedule_ray_would_run_differently():
    from ray.dag.dag_node_operation import _DAGNodeOperation as Op
    from ray.dag.dag_node_operation import _DAGNodeOperationType as T

    eng = Compiled()  # only the check: no actors started
    eng.actors = [_Actor(0)]
    expected = {0: [(10, "F0"), (11, "B0"), (12, "finish")]}
    tasks = {eng.actors[0]: [_Task(10), _Task(11), _Task(12)]}

    def check(*order: tuple[int, T]) -> str:
        ops = [Op(i, t) for i, t in order]
        return eng._check_schedule(_Graph({eng.actors[0]: ops}, tasks), expected)

    R, C, W = T.READ, T.COMPUTE, T.WRITE
    assert check((0, R), (0, C), (0, W), (1, R), (1, C), (1, W), (2, R), (2, C), (2, W)) == ""
    assert "not the schedule's" in check(
        (1, R), (1, C), (1, W), (0, R), (0, C), (0, W), (2, R), (2, C), (2, W)
    )
    assert "written after" in check(
        (0, R), (0, C), (1, R), (1, C), (0, W), (1, W), (2, R), (2, C), (2, W)
    )
