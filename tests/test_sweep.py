"""The simulators' shared rules (graphpart/plan/sweep.py).

Contract: waits_for gives what an action waits for and the delay after it: F of unit s the F of
s-1 plus the hop from s-1 to s (nothing for unit 0), W its own I, the last unit's B or I its own
F, any other B or I the B of s+1 (its I where (s+1, mb) splits its backward) plus the hop back.
sweep runs each row's actions in order, one at a time, each as early as its dependency allows,
and says how far each row got: a row waiting on an action nobody runs stops there.
"""

from __future__ import annotations

from graphpart.plan.sweep import sweep, waits_for


def hop(a: int, b: int) -> float:
    return 0.5 if (a, b) in {(0, 1), (1, 0)} else 0.0


def test_what_each_action_waits_for():
    split = {(2, 0)}
    assert waits_for(("F", 0, 3), 2, split, hop) is None
    assert waits_for(("F", 1, 3), 2, split, hop) == (("F", 0, 3), 0.5)
    assert waits_for(("W", 1, 3), 2, split, hop) == (("I", 1, 3), 0.0)
    assert waits_for(("B", 2, 3), 2, split, hop) == (("F", 2, 3), 0.0)
    assert waits_for(("I", 2, 0), 2, split, hop) == (("F", 2, 0), 0.0)
    assert waits_for(("B", 0, 3), 2, split, hop) == (("B", 1, 3), 0.5)
    assert waits_for(("I", 1, 0), 2, split, hop) == (("I", 2, 0), 0.0)  # 2 splits mb 0


def test_sweep_times_rows_as_early_as_allowed_and_stops_where_stuck():
    rows = [[("F", 0, 0), ("F", 0, 1), ("B", 0, 0)], [("F", 1, 0), ("B", 1, 0), ("F", 1, 1)]]
    secs = {"F": 1.0, "B": 2.0}

    def dep(key):
        return waits_for(key, 1, set(), hop)

    ran, pos = sweep(rows, lambda k: secs[k[0]], dep)
    assert pos == [3, 3]
    got = {(r, i): (s, e) for r, i, s, e in ran}
    assert got[1, 0] == (1.5, 2.5)  # F(1, 0) after F(0, 0) and the hop
    assert got[1, 1] == (2.5, 4.5)
    assert got[0, 2] == (5.0, 7.0)  # B(0, 0) after B(1, 0) and the hop back
    assert got[1, 2] == (4.5, 5.5)
    stuck, pos = sweep([[("B", 0, 0)], [("F", 1, 0)]], lambda k: 1.0, dep)
    assert pos == [0, 0] and stuck == []  # B(0) waits for B(1, 0), F(1, 0) for F(0, 0)
