"""Zero-bubble schedules, their text form and their validator (graphpart/plan/zero_bubble.py).

Contract: for K in 1..5 and M in 1..9 (M < K included) ZB-H1 and ZB-H2 are valid schedules
(every micro-batch's F, I and W once on every stage, in that order, no deadlock); ZB-H1 never
holds more micro-batches' activations on a stage than 1F1B's peak (K, its stage 0's) and ZB-H2
at most 2K - 1; with F, I and W of equal time neither has a larger bubble than 1F1B, and at
K=2, M in {4, 8} ZB-H1's bubble is at most half of 1F1B's; placed for unequal times too: its
mean bubble over the I/F x W/F grid is no larger than the order placed at equal times', at K=2,
M=8 under 0.7 of 1F1B's everywhere on it, and each stage's W's are in micro-batch order; at
K=2 its step is within 4% of the lower bound any order with 1F1B's memory has (stage 1 waits
for stage 0's first F; stage 0, two micro-batches in flight, waits for stage 1's first I) over
measured-like times, and on it for equal ones;
`parse_schedule(format_schedule(s))` is s; a schedule that breaks a rule is refused naming the
first action that breaks it, and a bad token names its line.
"""

from __future__ import annotations

import pytest

from graphpart.errors import PlanError
from graphpart.plan.schedule import (
    ROBUST_I,
    ROBUST_W,
    Action,
    list_schedule,
    one_f_one_b,
    simulate,
)
from graphpart.plan.zero_bubble import (
    format_schedule,
    make_split,
    parse_schedule,
    validate,
    zb_h1,
    zb_h2,
)


def _acts(text: str) -> list[Action]:
    return [Action(t[0], int(t[1:])) for t in text.split()]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 6, 9])
def test_generated_schedules_are_valid_and_bounded(k, m):
    base = simulate(one_f_one_b(k, m), 1.0, 2.0)
    for make, cap in ((zb_h1, k), (zb_h2, 2 * k - 1)):
        s = make(k, m)
        validate(s, m)
        t = simulate(s, 1.0, 2.0)
        assert max(t.peak_in_flight) <= min(cap, m)
        assert t.makespan <= base.makespan + 1e-9
    assert max(simulate(zb_h1(k, m), 1.0, 2.0).peak_in_flight) <= max(base.peak_in_flight)


@pytest.mark.parametrize("m", [4, 8])
def test_zb_h1_halves_the_bubble_at_two_stages(m):
    base = simulate(one_f_one_b(2, m), 1.0, 2.0).bubble
    assert simulate(zb_h1(2, m), 1.0, 2.0).bubble <= base / 2


def _k2_bound(f, i, w, hop, m) -> float:
    """A step no K=2 order holding at most two micro-batches a stage can beat: stage 1 starts
    after stage 0's first F and a hop; stage 0 runs two F's, then waits for stage 1's first F
    and I and two hops before it has anything else to run."""
    busy = [m * (f[k] + i[k] + w[k]) for k in (0, 1)]
    return max(f[0] + hop + busy[1], busy[0] + max(0.0, 2 * hop + f[1] + i[1] - f[0]))


@pytest.mark.parametrize("m", [4, 8])
def test_zb_h1_at_two_stages_is_at_or_near_the_lower_bound(m):
    s = zb_h1(2, m)
    worst = 0.0
    for f1 in (0.95, 1.0, 1.05):
        for i0, i1 in ((0.9, 1.0), (1.0, 1.0), (1.1, 1.2)):
            for w0, w1 in ((0.7, 0.7), (0.87, 0.87), (1.0, 0.7), (1.0, 1.0)):
                for hop in (0.0, 0.01):
                    f, i, w = (1.0, f1), (i0, i1), (w0, w1)
                    t = simulate(
                        s,
                        list(f),
                        [a + b for a, b in zip(i, w, strict=True)],
                        hop,
                        list(i),
                        list(w),
                    )
                    bound = _k2_bound(f, i, w, hop, m)
                    assert t.makespan >= bound - 1e-9  # it is a bound
                    worst = max(worst, t.makespan / bound)
    assert worst < 1.04
    unit = simulate(s, 1.0, 2.0, 0.0, 1.0, 1.0)
    assert unit.makespan == pytest.approx(_k2_bound((1, 1), (1, 1), (1, 1), 0.0, m))


def test_text_form_round_trips_and_reads_comments():
    s = zb_h1(3, 4)
    assert parse_schedule(format_schedule(s)) == s
    assert parse_schedule("0F0 0I0 # stage 0\n0W0\n1F0 1B0") == [_acts("F0 I0 W0"), _acts("F0 B0")]
    assert make_split("zb-h2", 2, 3) == zb_h2(2, 3)


@pytest.mark.parametrize(
    "text,message",
    [
        ("0F0 0X1", "line 1: '0X1' is not an action"),
        ("1F0 1B0", "stage 0 has no actions"),
        ("", "lists no actions"),
    ],
)
def test_bad_text_is_named(text, message):
    with pytest.raises(PlanError, match=message):
        parse_schedule(text)


@pytest.mark.parametrize(
    "text,message",
    [
        ("0F0 0W0 0I0", r"stage 0, action 1 \(0W0\): comes before I0"),
        ("0F0 0I0 0W0 0W0", r"action 3 \(0W0\): runs twice"),
        ("0F0 0B0 0I0 0W0", "has both a B and an I"),
        ("0F0 0I0", "stage 0 never runs W0"),
        ("0F0 0I0 0W0 0F1 0B1", "micro-batch 1, but there are 1"),
        ("0F0 0I0 0W0 1I0 1F0 1W0", r"stage 1, action 0 \(1I0\): comes before F0"),
    ],
)
def test_rule_breakers_are_named(text, message):
    with pytest.raises(PlanError, match=message):
        validate(parse_schedule(text), 1)


def test_a_deadlock_is_named():
    # stage 0 waits for I0 from stage 1 before sending F1; stage 1 waits for F1 before I0
    text = "0F0 0I0 0W0 0F1 0I1 0W1\n1F0 1F1 1I1 1W1 1I0 1W0"
    with pytest.raises(PlanError, match="deadlocks"):
        validate(parse_schedule(text), 2)


def test_unknown_split_schedule_is_refused():
    with pytest.raises(PlanError, match="use one of zb-h1, zb-h2"):
        make_split("zbv", 2, 2)


def _grid(schedule) -> list[float]:
    """The simulated bubble at every I/F x W/F ratio the placement is judged on."""
    return [
        simulate(schedule, 1.0, i + w, igrad=i, wgrad=w).bubble for i in ROBUST_I for w in ROBUST_W
    ]


@pytest.mark.parametrize(("k", "m"), [(2, 4), (2, 8), (3, 5), (4, 8)])
def test_placed_for_unequal_times(k, m):
    for make, cap in ((zb_h1, k), (zb_h2, 2 * k - 1)):
        s = make(k, m)
        unit = list_schedule(k, m, (cap,) * k)
        assert sum(_grid(s)) <= sum(_grid(unit)) + 1e-12
        for acts in s:  # the gradients' sums in the same order whichever order is picked
            ws = [a.mb for a in acts if a.kind == "W"]
            assert ws == sorted(ws) == list(range(m))
    if (k, m) == (2, 8):
        f1b = [simulate(one_f_one_b(k, m), 1.0, i + w).bubble for i in ROBUST_I for w in ROBUST_W]
        assert all(z < 0.7 * b for z, b in zip(_grid(zb_h1(k, m)), f1b, strict=True))
        assert max(_grid(list_schedule(k, m, (k,) * k))) > 1.5 * max(f1b)  # the unit-time order
