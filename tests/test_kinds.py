"""Contract of graphpart/plan/kinds.py: every schedule by name, with its placement.

SCHEDULES is schedule.KINDS then the virtual ones (interleaved, zbv). `chunks_for` gives the
chunks a device a schedule runs with: 0 (not given) is the schedule's own (2 for interleaved
and zbv, 1 for the others); interleaved takes any count >= 1, zbv only 2, the others only 1;
a bad value is a one-line PlanError naming it and what is valid. `check_layers` refuses more
virtual stages than layers, naming both. `make` gives a one-stage schedule as chunk 0 of an
identity placement (the same actions as schedule.make) and a virtual one as
virtual_schedules.make gives it.
"""

from __future__ import annotations

import pytest

from graphpart.errors import PlanError
from graphpart.plan import schedule as sch
from graphpart.plan import virtual_schedules as vs
from graphpart.plan.kinds import SCHEDULES, check_layers, chunks_for, is_virtual, make


def test_names_and_defaults():
    assert SCHEDULES == (*sch.KINDS, "interleaved", "zbv")
    assert [is_virtual(k) for k in SCHEDULES] == [False] * len(sch.KINDS) + [True, True]
    assert [chunks_for(k) for k in SCHEDULES] == [1] * len(sch.KINDS) + [2, 2]
    assert chunks_for("interleaved", 5) == 5 and chunks_for("zbv", 2) == 2
    assert chunks_for("1f1b", 1) == 1


@pytest.mark.parametrize(
    ("kind", "chunks", "match"),
    [
        ("zbv", 3, "chunks=3 with schedule 'zbv', which runs 2 chunks a device; use chunks=2"),
        ("1f1b", 2, "chunks=2 with schedule '1f1b', which runs one stage a device"),
        ("interleaved", -1, "chunks=-1: use 1 or more"),
        ("nope", 1, "schedule 'nope' is unknown; use one of gpipe, 1f1b"),
    ],
)
def test_bad_chunks_are_named(kind, chunks, match):
    with pytest.raises(PlanError, match=match):
        chunks_for(kind, chunks)


def test_more_virtual_stages_than_layers_is_refused():
    check_layers("interleaved", 2, 3, 6)
    with pytest.raises(PlanError, match="needs 8 virtual stages, more than the model's 6 layers"):
        check_layers("interleaved", 4, 2, 6)
    with pytest.raises(PlanError, match="needs 6 virtual stages"):
        check_layers("zbv", 3, 0, 4)


def test_make_lifts_one_stage_schedules_and_passes_virtual_ones():
    where, acts = make("zb-h1", 3, 0, 4)
    assert where.owner == (0, 1, 2)
    assert [[(a.kind, a.mb, a.chunk) for a in row] for row in acts] == [
        [(a.kind, a.mb, 0) for a in row] for row in sch.make("zb-h1", 3, 4)
    ]
    where, acts = make("interleaved", 2, 3, 5)
    want_where, want = vs.make("interleaved", 2, 3, 5)
    assert where == want_where and [list(r) for r in acts] == want
    assert make("zbv", 2, 0, 3)[0].name == "v"
