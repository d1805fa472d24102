"""Rounds take the schedules in turns on the same workers and compare each round's bubbles.

Contract: `summarise` gives each schedule's median bubble (measured and simulated), the worst
gap between them in points, and for every schedule but the first, each round's ratio of its
measured (and simulated) bubble to the first schedule's in the same round, their medians and
the rounds at most 1/2; with a split backward, F, I and W per stage and their spread (the
slowest over the fastest, less 1). `round_kinds` keeps the schedules of one stage a worker and
refuses fewer than two with a ConfigError naming them; `bench pipeline --rounds` does so before
any run. `measure_rounds` runs every (M, round, schedule) on one engine an M, the order rotated
each round, and the report prints a line per schedule and M.
"""

from __future__ import annotations

import pytest

from graphpart.errors import ConfigError
from graphpart.tools.bench_pipeline.cli import main
from graphpart.tools.bench_pipeline.rounds import (
    format_rounds,
    measure_rounds,
    round_kinds,
    summarise,
)


def _got(meas: float, pred: float, split: bool) -> dict:
    g = {"measured_bubble": meas, "predicted_bubble": pred, "step_ms": 10.0, "fwd_ms": [1.0, 1.2]}
    if split:
        g |= {"igrad_ms": [1.1, 1.0], "wgrad_ms": [0.9, 1.0]}
    return g


def test_summarise_ratios_round_by_round_against_the_first_schedule():
    rounds = [
        {"1f1b": _got(0.20, 0.19, False), "zb-h1": _got(0.08, 0.07, True)},
        {"1f1b": _got(0.10, 0.12, False), "zb-h1": _got(0.06, 0.05, True)},
        {"1f1b": _got(0.25, 0.20, False), "zb-h1": _got(0.10, 0.09, True)},
    ]
    row = summarise(4, ["1f1b", "zb-h1"], rounds, 2, [3, 3])
    base, zb = row["schedules"]["1f1b"], row["schedules"]["zb-h1"]
    assert row["baseline"] == "1f1b" and row["rounds"] == 3
    assert base["measured_median"] == pytest.approx(0.20)
    assert base["worst_gap_points"] == pytest.approx(5.0)
    assert "ratio" not in base and "fiw_spread" not in base
    assert zb["ratio"] == pytest.approx([0.4, 0.6, 0.4])
    assert zb["ratio_median"] == pytest.approx(0.4)
    assert zb["predicted_ratio"] == pytest.approx([0.07 / 0.19, 0.05 / 0.12, 0.09 / 0.20])
    assert zb["rounds_at_most_half"] == 2
    assert zb["fiw_spread"] == pytest.approx(1.2 / 0.9 - 1.0)
    lines = format_rounds([row])
    assert len(lines) == 3 and "ratio median 0.400" in lines[2] and "at most 1/2 in 2/3" in lines[2]


def test_round_kinds_need_two_schedules_of_one_stage_a_worker():
    assert round_kinds(["1f1b", "interleaved", "zb-h1"]) == ["1f1b", "zb-h1"]
    with pytest.raises(ConfigError, match=r"--schedules 1f1b,zbv has 1 .*--schedules 1f1b,zb-h1"):
        round_kinds(["1f1b", "zbv"])


def test_the_cli_refuses_rounds_of_one_schedule_before_running(monkeypatch):
    from graphpart.tools.bench_pipeline import cli

    monkeypatch.setattr(cli, "run", lambda *a, **kw: pytest.fail("ran"))
    with pytest.raises(ConfigError, match="--rounds compares two schedules or more"):
        main(["--rounds", "3", "--schedules", "1f1b"])


def test_rounds_run_each_schedule_in_turn_on_one_engine(ray_session, monkeypatch):
    from graphpart.tools.bench_pipeline import rounds as mod

    engines, order = [], []
    real = mod.Engine

    class Counted(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            engines.append(self)

        def reschedule(self, kind, microbatches):
            order.append(kind)
            super().reschedule(kind, microbatches)

    monkeypatch.setattr(mod, "Engine", Counted)
    rows = measure_rounds((16, 32, 32, 8), 16, "float32", [2], ["1f1b", "zb-h1"], 2, 1, 1, 1e-4)
    # the engine's own first schedule, then the rounds: A B, then B A
    assert len(engines) == 1 and order == ["1f1b", "1f1b", "zb-h1", "zb-h1", "1f1b"]
    (row,) = rows
    zb = row["schedules"]["zb-h1"]
    assert len(zb["ratio"]) == 2 and all(r >= 0 for r in zb["ratio"])
    assert len(zb["igrad_ms"]) == 2 and zb["fiw_spread"] >= 0
    assert all(0 <= b < 1 for b in row["schedules"]["1f1b"]["measured_bubble"])
