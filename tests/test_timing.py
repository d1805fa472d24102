"""Contract of graphpart/plan/timing.py for the split schedules (the others: test_auto.py).

`pipeline_step` times ZB-H1 and ZB-H2 as the simulator does (I and W the times given, or
each half a backward):
with a device per stage (capacity None, or at least K) its timeline is
graphpart.plan.schedule.simulate's. On fewer cores (processor sharing) it keeps the
simulator's rules: every stage runs its actions in its schedule's order; F(k, m) starts after
F(k-1, m) plus the hop; I(k, m) after the next stage's I(k+1, m) plus the hop (on the last
stage, after its own F); W(k, m) after its own I(k, m); and the step takes at least the total
work over the capacity.
"""

from __future__ import annotations

import pytest

from graphpart.plan import schedule as sch
from graphpart.plan import timing

FWD, BWD, FIN, HOP = [1.0, 2.0, 1.5], [2.0, 3.0, 2.5], [0.5, 0.2, 0.1], 0.25


@pytest.mark.parametrize("kind", ["zb-h1", "zb-h2"])
@pytest.mark.parametrize("m", [1, 2, 5])
def test_split_schedules_follow_the_simulator_rules(kind, m):
    schedule = sch.make(kind, 3, m)
    free, tl0 = timing.pipeline_step(kind, m, FWD, BWD, FIN, HOP)
    assert tl0.events == sch.simulate(schedule, FWD, BWD, HOP).events
    assert timing.pipeline_step(kind, m, FWD, BWD, FIN, HOP, capacity=3.0)[0] == free
    step, tl = timing.pipeline_step(kind, m, FWD, BWD, FIN, HOP, capacity=1.0)
    assert step >= m * (sum(FWD) + sum(BWD)) + sum(FIN) - 1e-9
    assert step >= free - 1e-9
    end = {(e.stage, e.action): e.end for e in tl.events}
    for e in tl.events:
        k, a = e.stage, e.action
        if a.kind == "F" and k > 0:
            assert e.start >= end[k - 1, a] + HOP - 1e-9
        if a.kind == "I":
            before = end[k + 1, a] + HOP if k < 2 else end[k, sch.Action("F", a.mb)]
            assert e.start >= before - 1e-9
        if a.kind == "W":
            assert e.start >= end[k, sch.Action("I", a.mb)] - 1e-9
    for k in range(3):
        mine = [e.action for e in sorted(tl.events, key=lambda e: e.start) if e.stage == k]
        assert mine == schedule[k]


@pytest.mark.parametrize("capacity", [None, 1.0])
def test_split_backward_takes_the_given_i_and_w_times(capacity):
    """Given I and W times, every I and W event lasts them (the default: half of B each),
    with a device per stage and on one shared core alike (where each lasts at least them)."""
    igrad, wgrad = [0.5, 2.0, 1.0], [1.5, 1.0, 1.5]
    _, tl = timing.pipeline_step("zb-h1", 4, FWD, BWD, FIN, HOP, capacity, igrad, wgrad)
    for ev in tl.events:
        want = {"F": FWD, "I": igrad, "W": wgrad}[ev.action.kind][ev.stage]
        if capacity is None:
            assert ev.end - ev.start == pytest.approx(want)
        else:
            assert ev.end - ev.start >= want - 1e-9
    if capacity is None:
        _, half = timing.pipeline_step("zb-h1", 4, FWD, BWD, FIN, HOP)
        for ev in half.events:
            if ev.action.kind in ("I", "W"):
                assert ev.end - ev.start == pytest.approx(BWD[ev.stage] / 2)
