"""LayerTimes: per-layer F, I, W seconds at measured row counts, interpolated for the time model.

Contract: an action over some layers is the sum of theirs; between two measured row counts a
time is linear in rows, below the first it is the first's, beyond the last it follows the
last two (never below zero); B is I + W; `update_s` sums the layers' updates; layers are named
by the graph's layer numbers, and a record that is malformed or asked for a layer it did not
time says what is wrong. `slowest` of several processes' records keeps each time's largest.
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
