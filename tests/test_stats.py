"""workers/stats.py: one process's resident figures from the workers it runs.

Contract: `Rss.of_process` takes the baseline (and its parts) of the worker that took the
earliest, the largest peak, and the latest reading; `growth` is peak over baseline;
`by_process` groups workers' stats by pid in the order of each process's first worker.
"""

from __future__ import annotations

from workers.stats import Busy, LedgerSnapshot, Rss, StageStats, by_process


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
