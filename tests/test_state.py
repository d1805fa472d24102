"""Stage state to and from the driver (graphpart/engines/state.py).

Contract: on Ray, `gather` returns each stage's parameters, optimizer arrays and step count
bit for bit as the stage holds them, whether the stage writes a file on this machine or (a
stage on another machine: here a `host` that is not this one) returns them through Ray, and
`gather_params` the parameters alone either way; in process, `live` gives the workers' own
arrays (moving with the next step) where the default copies; `scatter`
loads states either way, replicas given one state sharing one file; and a stage that writes
its state to a file does not grow its shared (object-store) or private resident memory by its
state, checkpoint after checkpoint, where returning it through Ray grows the shared pages each
time.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import mlp_problem

from graphpart.engines import Engine, state
from graphpart.engines.data_parallel import DataParallel
from graphpart.optim import make_optimizer
from graphpart.plan.partition import partition


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(
        x["steps"] == y["steps"]
        and all(np.array_equal(x["params"][n], y["params"][n]) for n in x["params"])
        and all(
            np.array_equal(p, q)
            for n in x["opt"]
            for p, q in zip(x["opt"][n], y["opt"][n], strict=True)
        )
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("host", [None, "another-machine"], ids=["file", "through-ray"])
def test_gather_and_scatter_give_the_stages_state(ray_session, host):
    g, p0, X, y = mlp_problem([6, 5, 7, 4, 3], 16)
    opt = make_optimizer("adam", lr=0.05)
    with (
        Engine(partition(g, 3), p0, opt, transport="shm", max_rows=8) as eng,
        Engine(partition(g, 3), p0, opt, transport="inprocess", max_rows=8) as ref,
    ):
        for e in (eng, ref):
            e.step(X[:8], y[:8])
        got = state.gather(eng.transport, range(3), host=host)
        assert _same(got, ref.get_state())
        params = state.gather_params(eng.transport, range(3), host=host)
        want = ref.get_params()
        assert list(params) == list(want) and all(np.array_equal(params[n], want[n]) for n in want)
        ref.step(X[8:], y[8:])  # a later state, loaded back into the Ray stages
        state.scatter(eng.transport, dict(enumerate(ref.get_state())), host=host)
        assert _same(state.gather(eng.transport, range(3), host=host), ref.get_state())


def test_live_state_in_process_is_the_workers_own():
    g, p0, X, y = mlp_problem([6, 5, 3], 16)
    with Engine(partition(g, 1), p0, make_optimizer("adam", lr=0.05), max_rows=16) as eng:
        live, copy = eng.get_state(live=True), eng.get_state()
        assert _same(live, copy)
        eng.step(X, y)
        moved = [{**st, "steps": 1} for st in live]  # the step count is a number, not live
        assert _same(moved, eng.get_state())  # the live arrays moved with the step
        assert not _same(copy, eng.get_state())  # the copy did not


def test_replicas_get_one_state(ray_session):
    g, p0, X, y = mlp_problem([6, 5, 3], 16)
    opt = make_optimizer("sgd", lr=0.05, momentum=0.9)
    with DataParallel(partition(g, 1), p0, opt, replicas=2, max_rows=16) as dp:
        dp.step(X, y)
        st = dp.get_state()
        dp.step(X, y)
        dp.set_state(st)
        for r in range(2):
            assert _same(state.gather(dp.transport, [r]), st)


def _stage_rss(eng: Engine) -> list[dict[str, int]]:
    return [dict(s.rss.parts_now) for s in eng.stats()]


def test_a_checkpoint_through_files_does_not_grow_the_stages(ray_session):
    g, p0, X, y = mlp_problem([64, 512, 512, 10], 32, seed=1)  # ~0.6 M parameters a stage
    opt = make_optimizer("adam", lr=1e-3)
    mib = 1 << 20
    with Engine(partition(g, 2), p0, opt, transport="shm", max_rows=32) as eng:
        eng.step(X, y)
        eng.get_state()  # first touches (library code, the file's first write) out of the way
        before = _stage_rss(eng)
        for _ in range(3):
            eng.get_state()
            eng.get_params()
        after = _stage_rss(eng)
        for b, a in zip(before, after, strict=True):
            assert a["RssShmem"] - b["RssShmem"] < mib, (b, a)
            assert a["RssAnon"] - b["RssAnon"] < 2 * mib, (b, a)
        # the contrast: the same state through Ray's object store maps new shared pages
        for _ in range(3):
            state.gather(eng.transport, range(2), host="another-machine")
        grew = [a["RssShmem"] for a in _stage_rss(eng)]
        assert max(n - a["RssShmem"] for n, a in zip(grew, after, strict=True)) > 4 * mib
