"""workers/stats.py: one process's resident figures from the workers it runs.

Contract: `Rss.of_process` takes the baseline (and its parts) of the worker that took the
earliest, the largest peak, and the latest reading; `growth` is peak over baseline;
`by_process` groups workers' stats by pid in the order of each process's first worker.
`exposed_beyond_compute` gives, per step, the replicas' all-reduce end past their last
backward's end; Busy keeps the last MARKS steps' marks.
"""

from __future__ import annotations

from workers.stats import Busy, LedgerSnapshot, Rss, StageStats, by_process, exposed_beyond_compute


def _rss(baseline, peak, current, tag):
    return Rss(baseline, peak, current, None, tag, {"RssAnon": baseline}, {"RssAnon": current})


def test_a_process_rss_from_its_workers():
    first, later = _rss(100, 180, 170, "VmHWM"), _rss(120, 180, 175, "VmHWM")
    r = Rss.of_process([later, first])
    assert (r.baseline, r.peak, r.current, r.growth) == (100, 180, 175, 80)
    assert r.parts_baseline == {"RssAnon": 100} and r.parts_now == {"RssAnon": 175}
    assert Rss.of_process([first]) == first


def test_stats_grouped_by_process_in_first_worker_order():
    snap = LedgerSnapshot({}, {}, 0, 0.0)
    stats = [
        StageStats(s, pid, Busy(), 0, 0, 1, snap, _rss(1, 2, 2, "VmHWM"))
        for s, pid in enumerate([7, 5, 5, 7])
    ]
    groups = by_process(stats)
    assert list(groups) == [7, 5]
    assert [[st.stage for st in g] for g in groups.values()] == [[0, 3], [1, 2]]


def test_exposed_beyond_compute_leaves_out_the_wait_for_a_slower_replica():
    """Per step, the all-reduce's end past the last replica's backward: a replica that ended
    its backward early and waited counts its wait in its own `exposed`, not here; marks are
    kept for the last MARKS steps."""
    fast = [(1.0, 3.0), (11.0, 12.5)]  # backward ended, all-reduce ended
    slow = [(2.5, 3.0), (12.0, 12.5)]
    assert exposed_beyond_compute([fast, slow]) == [0.5, 0.5]
    assert exposed_beyond_compute([[(1.0, 0.5)]]) == [0.0]
    b = Busy()
    for i in range(Busy.MARKS + 3):
        b.mark_reduce(float(i), i + 0.5)
    assert len(b.reduce_marks) == Busy.MARKS and b.reduce_marks[0] == (3.0, 3.5)
