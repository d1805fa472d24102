"""Contract of graphpart.plan.schedule.

`gpipe` and `one_f_one_b` give every stage exactly one F and one B per micro-batch, F(m) before
B(m); GPipe runs forwards in order then backwards in reverse order, 1F1B runs min(K-k-1, M)
warmup forwards then alternates, backwards in order. Peak in-flight micro-batches: M on every
GPipe stage, min(K-k, M) on 1F1B stage k. `simulate` honours the cross-stage dependencies and
per-stage order; with equal stage times and no comm both schedules have bubble (K-1)/(M+K-1).
A schedule that cannot progress raises PlanError naming the stuck stage and action. `make`
builds every generator by name (GENERATORS: KINDS and the zero-bubble zb-h1, zb-h2), a fresh
list each call; `peak_pending` counts the most micro-batches between their I and W. `ascii`
draws one row per stage plus a legend. Bad arguments raise one-line PlanErrors.
"""

import pytest

from graphpart.errors import PlanError
from graphpart.plan.schedule import (
    GENERATORS,
    KINDS,
    Action,
    Event,
    Timeline,
    gpipe,
    make,
    one_f_one_b,
    peak_in_flight,
    peak_pending,
    simulate,
    zb_h1,
    zb_h2,
)

F, B = (lambda m: Action("F", m)), (lambda m: Action("B", m))
GRID = [(kind, k, m) for kind in ("gpipe", "1f1b") for k in range(1, 7) for m in range(1, 11)]


def test_action_str():
    assert str(F(3)) == "F3" and str(B(0)) == "B0"


def test_action_rejects_bad_fields():
    with pytest.raises(PlanError, match="'X' is unknown; use one of F, B, I, W"):
        Action("X", 0)
    with pytest.raises(PlanError, match="micro-batch -1"):
        Action("F", -1)


@pytest.mark.parametrize(("kind", "stages", "microbatches"), GRID)
def test_schedule_invariants_and_simulation(kind, stages, microbatches):
    schedule = make(kind, stages, microbatches)
    assert len(schedule) == stages
    for actions in schedule:
        assert sorted(a.mb for a in actions if a.kind == "F") == list(range(microbatches))
        assert sorted(a.mb for a in actions if a.kind == "B") == list(range(microbatches))
        for m in range(microbatches):
            assert actions.index(F(m)) < actions.index(B(m))
    timeline = simulate(schedule, 1.0, 2.0)
    assert len(timeline.events) == 2 * stages * microbatches
    end = {(ev.stage, ev.action): ev.end for ev in timeline.events}
    start = {(ev.stage, ev.action): ev.start for ev in timeline.events}
    for k in range(stages):
        for m in range(microbatches):
            if k > 0:
                assert start[k, F(m)] >= end[k - 1, F(m)]
            if k < stages - 1:
                assert start[k, B(m)] >= end[k + 1, B(m)]
            else:
                assert start[k, B(m)] >= end[k, F(m)]


def test_gpipe_order():
    assert gpipe(2, 3) == [[F(0), F(1), F(2), B(2), B(1), B(0)]] * 2


def test_one_f_one_b_order():
    assert one_f_one_b(3, 4) == [
        [F(0), F(1), F(2), B(0), F(3), B(1), B(2), B(3)],
        [F(0), F(1), B(0), F(2), B(1), F(3), B(2), B(3)],
        [F(0), B(0), F(1), B(1), F(2), B(2), F(3), B(3)],
    ]
    # fewer micro-batches than stages: warmup is capped at M
    assert one_f_one_b(4, 1) == [[F(0), B(0)]] * 4


@pytest.mark.parametrize(
    ("stages", "microbatches"), [(k, m) for k in range(1, 7) for m in (1, 3, 8)]
)
def test_peak_in_flight(stages, microbatches):
    g = simulate(gpipe(stages, microbatches), 1.0, 1.0).peak_in_flight
    assert g == (microbatches,) * stages
    f = tuple(peak_in_flight(a) for a in one_f_one_b(stages, microbatches))
    assert f == tuple(min(stages - k, microbatches) for k in range(stages))


@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
@pytest.mark.parametrize(
    ("stages", "microbatches"), [(1, 1), (1, 5), (2, 1), (4, 4), (4, 8), (6, 3)]
)
@pytest.mark.parametrize(("tf", "tb"), [(1.0, 1.0), (1.0, 2.0), (0.5, 1.5)])
def test_bubble_formula(kind, stages, microbatches, tf, tb):
    timeline = simulate(make(kind, stages, microbatches), tf, tb)
    assert timeline.makespan == pytest.approx((microbatches + stages - 1) * (tf + tb))
    assert timeline.busy == pytest.approx([microbatches * (tf + tb)] * stages)
    assert timeline.bubble == pytest.approx((stages - 1) / (microbatches + stages - 1))


def test_make_builds_every_generator_by_name():
    assert set(KINDS) <= set(GENERATORS) == {"gpipe", "1f1b", "zb-h1", "zb-h2"}
    assert make("zb-h1", 3, 5) == zb_h1(3, 5) and make("zb-h2", 3, 5) == zb_h2(3, 5)
    assert make("zb-h1", 3, 5) is not make("zb-h1", 3, 5)  # a fresh list each time
    with pytest.raises(PlanError, match="'zbv' is unknown; use one of gpipe, 1f1b, zb-h1, zb-h2"):
        make("zbv", 2, 2)
    with pytest.raises(PlanError, match="stages=0 is not positive"):
        make("zb-h1", 0, 2)


def test_peak_pending_counts_micro_batches_between_i_and_w():
    Ia, Wa = (lambda m: Action("I", m)), (lambda m: Action("W", m))
    assert peak_pending([F(0), F(1), Ia(0), Ia(1), Wa(0), Wa(1)]) == 2
    assert peak_pending([F(0), Ia(0), Wa(0), F(1), Ia(1), Wa(1)]) == 1
    for kind in ("gpipe", "1f1b"):
        assert all(peak_pending(a) == 0 for a in make(kind, 3, 4))
    for kind in ("zb-h1", "zb-h2"):
        for acts in make(kind, 4, 8):
            assert 1 <= peak_pending(acts) <= peak_in_flight(acts)


def test_single_stage_has_no_bubble():
    assert simulate(make("1f1b", 1, 4), 1.0, 2.0).bubble == 0.0


def test_comm_and_per_stage_times():
    # K=2, M=1: F on 0, comm, F on 1, B on 1, comm, B on 0
    timeline = simulate(gpipe(2, 1), [1.0, 2.0], [3.0, 4.0], comm=0.5)
    assert timeline.makespan == pytest.approx(1.0 + 0.5 + 2.0 + 4.0 + 0.5 + 3.0)
    assert timeline.busy == (4.0, 6.0)
    assert timeline.events[0] == Event(0, F(0), 0.0, 1.0)
    assert timeline.events[-1] == Event(0, B(0), 8.0, 11.0)


def test_deadlock_is_detected():
    # stage 0 wants B0 before F1, but stage 1 needs F1 before it can run B0: neither can move
    bad = [[F(0), B(0), F(1), B(1)], [F(0), F(1), B(0), B(1)]]
    with pytest.raises(PlanError) as info:
        simulate(bad, 1.0, 1.0)
    assert str(info.value) == (
        "schedule deadlocks: stage 0 is stuck at B0 (step 1), waiting for B0 on stage 1"
    )


def test_missing_dependency_is_named():
    with pytest.raises(PlanError) as info:
        simulate([[F(0), B(0)], [F(0), F(1), B(0), B(1)]], 1.0, 1.0)
    assert str(info.value) == (
        "schedule deadlocks: stage 1 is stuck at F1 (step 1), "
        "waiting for F1 on stage 0, which stage 0 never runs"
    )


def test_backward_before_forward_deadlocks():
    with pytest.raises(PlanError, match="stage 0 is stuck at B0"):
        simulate([[B(0), F(0)]], 1.0, 1.0)


def test_ascii_has_a_row_per_stage_and_a_legend():
    timeline = simulate(one_f_one_b(4, 6), 1.0, 1.0)
    text = timeline.ascii(width=9 + 18 + 1)  # one character per time unit
    lines = text.splitlines()
    assert lines[:4] == [
        "stage 0 |0123...a4b5c.d.e.f|",
        "stage 1 |.012..a3b4c5d.e.f.|",
        "stage 2 |..01.a2b3c4d5e.f..|",
        "stage 3 |...0a1b2c3d4e5f...|",
    ]
    assert "bubble 33.3%" in text and "legend" in text
    wide = timeline.ascii()
    assert all(len(line) <= 80 for line in wide.splitlines())
    assert [line[:9] for line in wide.splitlines()[:4]] == [f"stage {k} |" for k in range(4)]


def test_ascii_rejects_tiny_width():
    with pytest.raises(PlanError, match="width=5"):
        simulate(gpipe(2, 2), 1.0, 1.0).ascii(width=5)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: make("zb", 2, 2), "schedule 'zb' is unknown; use one of gpipe, 1f1b"),
        (lambda: make("gpipe", 0, 2), "stages=0"),
        (lambda: make("1f1b", 2, 0), "microbatches=0"),
        (lambda: simulate([], 1.0, 1.0), "0 stages"),
        (lambda: simulate(gpipe(3, 1), [1.0, 1.0], 1.0), "fwd has 2 entries for 3 stages"),
        (lambda: simulate(gpipe(2, 1), 1.0, -1.0), "bwd time -1.0 of stage 0"),
        (lambda: simulate(gpipe(2, 1), 1.0, 1.0, comm=-0.1), "comm=-0.1"),
        (lambda: simulate([[F(0), F(0), B(0)]], 1.0, 1.0), "stage 0 runs F0 twice"),
    ],
)
def test_bad_arguments(call, fragment):
    with pytest.raises(PlanError, match=fragment) as info:
        call()
    assert "\n" not in str(info.value)


def test_timeline_is_frozen():
    timeline = simulate(gpipe(1, 1), 1.0, 1.0)
    assert isinstance(timeline, Timeline)
    with pytest.raises(AttributeError):
        timeline.makespan = 0.0  # type: ignore[misc]
