"""LayerTimes: per-layer F, I, W seconds at measured row counts, interpolated for the time model.

Contract: an action over some layers is the sum of theirs; between two measured row counts a
time is linear in rows, below the first it is the first's, beyond the last it follows the
last two (never below zero); B is I + W; `update_s` sums the layers' updates; layers are named
by the graph's layer numbers, and a record that is malformed or asked for a layer it did not
time says what is wrong. `slowest` of several processes' records keeps each time's largest.
With `warm` times (a step's later micro-batches) an action over a step of M micro-batches
costs the first's time and M - 1 warm ones, on average.
"""

from __future__ import annotations

import pytest

from graphpart.errors import PlanError
from graphpart.plan.layer_times import LayerTimes, slowest

LT = LayerTimes(
    ids=(1, 2),
    rows=(2, 4, 8),
    seconds=(
        ((1.0, 0.0, 2.0), (3.0, 1.0, 1.0)),
        ((2.0, 0.0, 4.0), (5.0, 2.0, 2.0)),
        ((4.0, 0.0, 8.0), (9.0, 4.0, 4.0)),
    ),
    update=(0.5, 0.25),
)


def test_an_action_sums_its_layers_at_measured_rows():
    assert LT.action_s("F", (1, 2), 4) == 2.0 + 5.0
    assert LT.action_s("I", (1,), 8) == 0.0  # the first layer has no input gradient
    assert LT.action_s("B", (2,), 2) == 1.0 + 1.0
    assert LT.update_s((1, 2)) == 0.75


def test_rows_between_below_and_beyond_the_measured():
    assert LT.action_s("F", (2,), 6) == pytest.approx(7.0)  # halfway from 5 to 9
    assert LT.action_s("F", (2,), 1) == 3.0  # below: the first measured
    assert LT.action_s("W", (1,), 16) == pytest.approx(16.0)  # along 4 -> 8 at 4 and 8 rows
    falling = LayerTimes((1,), (1, 2), (((2.0, 0.0, 0.0),), ((1.0, 0.0, 0.0),)), (0.0,))
    assert falling.action_s("F", (1,), 10) == 0.0  # never negative


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rows": (4, 2, 8)}, "increasing"),
        ({"rows": (2, 4)}, "3 rows of times for 2 row counts"),
        ({"update": (0.5,)}, "1 updates for layers"),
        ({"ids": (1, 1)}, "distinct"),
    ],
)
def test_a_malformed_record_says_what_is_wrong(kw, match):
    fields = {"ids": LT.ids, "rows": LT.rows, "seconds": LT.seconds, "update": LT.update, **kw}
    with pytest.raises(PlanError, match=match):
        LayerTimes(**fields)


def test_bad_times_and_unknown_layers_and_kinds_are_named():
    with pytest.raises(PlanError, match=r"layer 1: \(1.0, -1.0, 0.0\)"):
        LayerTimes((1,), (1,), (((1.0, -1.0, 0.0),),), (0.0,))
    with pytest.raises(PlanError, match=r"layer 3 was not timed; timed: \[1, 2\]"):
        LT.action_s("F", (3,), 4)
    with pytest.raises(PlanError, match="action kind 'X'"):
        LT.action_s("X", (1,), 4)


def test_slowest_takes_each_time_s_largest():
    """Of several processes' records of the same layers and rows, `slowest` keeps each F, I,
    W and update at its largest (a step waits for its slowest device); records of other
    layers or rows are refused."""
    other = LayerTimes(
        ids=(1, 2),
        rows=(2, 4, 8),
        seconds=tuple(tuple((f + 1.0, 0.5, w - 1.0) for f, _, w in per) for per in LT.seconds),
        update=(0.25, 0.75),
    )
    got = slowest([LT, other])
    for per, a, b in zip(got.seconds, LT.seconds, other.seconds, strict=True):
        for t, ta, tb in zip(per, a, b, strict=True):
            assert t == tuple(max(x, y) for x, y in zip(ta, tb, strict=True))
    assert got.update == (0.5, 0.75)
    assert slowest([LT]) == LT
    with pytest.raises(PlanError, match="rows"):
        slowest([LT, LayerTimes(ids=(1, 2), rows=(2,), seconds=(LT.seconds[0],), update=(0, 0))])
    with pytest.raises(PlanError, match="no LayerTimes"):
        slowest([])


def test_a_step_of_several_microbatches_averages_the_first_and_the_warm_ones():
    warm = tuple(tuple(tuple(v / 2 for v in t) for t in per) for per in LT.seconds)
    lt = LayerTimes(LT.ids, LT.rows, LT.seconds, LT.update, warm)
    assert lt.action_s("F", (1, 2), 4) == LT.action_s("F", (1, 2), 4)  # one micro-batch
    assert lt.action_s("F", (2,), 4, microbatches=4) == pytest.approx((5.0 + 3 * 2.5) / 4)
    assert lt.action_s("B", (2,), 2, 2) == pytest.approx((2.0 + 1.0) / 2)  # I + W: 2, then 1
    assert LT.action_s("F", (2,), 4, microbatches=4) == 5.0  # no warm times: the first's
    both = slowest([lt, LayerTimes(LT.ids, LT.rows, LT.seconds, LT.update, LT.seconds)])
    assert both.warm == LT.seconds
    assert slowest([lt, LT]).warm is None  # not measured by every process: not kept
    with pytest.raises(PlanError, match="warm: 1 rows of times for 3 row counts"):
        LayerTimes(LT.ids, LT.rows, LT.seconds, LT.update, warm[:1])
