"""Run one strategy of a comparison: predict its memory, check the budget, train, collect."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from graphpart.errors import GraphpartError
from graphpart.plan.memory import CATEGORIES, budget_problem
from graphpart.run.config import Config
from graphpart.run.setup import predicted_memory, setup, uses_ray
from graphpart.run.train import train
from graphpart.tools.compare.strategies import Strategy


@dataclass
class Outcome:
    """What one strategy did: skipped (does not fit, failed) or its measured run."""

    strategy: Strategy
    config: Config
    status: str  # "ran" | "does not fit" | "failed" | "interrupted"
    problem: str | None = None
    predicted: list[dict[str, int]] = field(default_factory=list)  # per device: category -> bytes
    ledger: list[dict[str, int]] = field(default_factory=list)  # per device: ledger peaks
    resident: list[int] = field(default_factory=list)  # per device: OS resident growth
    epochs: list[dict[str, Any]] = field(default_factory=list)  # metrics rows + train_s
    summary: dict[str, Any] = field(default_factory=dict)  # graphpart train's summary

    @property
    def ran(self) -> bool:
        return self.status == "ran"

    @property
    def steps(self) -> int:
        return int(self.summary.get("steps") or 0)

    def peak(self, which: str = "measured") -> int:
        """The largest device's bytes: "measured" (the OS: resident growth of the worker's
        process over its baseline), "ledger" (the workers' own accounting) or "predicted"."""
        if which == "measured":
            return max(self.resident, default=0)
        per = self.ledger if which == "ledger" else self.predicted
        return max((d["total"] for d in per), default=0)


def with_totals(by_category: dict[str, int]) -> dict[str, int]:
    out = {c: int(by_category.get(c, 0)) for c in CATEGORIES}
    out["total"] = sum(out.values())
    return out


def strategy_config(base: Config, s: Strategy, run_dir: Path) -> Config:
    """The base config with the strategy's overrides and its own run directory."""
    values = base.to_dict()
    for dotted, v in {**s.overrides, "run.dir": str(run_dir), "run.name": s.key}.items():
        section, key = dotted.split(".")
        values[section][key] = v
    return Config.from_dict(values, origin=f"strategy {s.label}")


def _silent(msg: str) -> None:
    """train's own epoch lines: `on_epoch` reports them, prefixed with the strategy."""


def run_strategy(
    base: Config,
    s: Strategy,
    *,
    run_dir: Path,
    budget: int | None,
    threads: int,
    log: Callable[[str], None],
) -> Outcome:
    """Predict, check the budget, train. A strategy that does not fit is not run."""
    try:
        cfg = strategy_config(base, s, run_dir)
        st = setup(cfg)
        pred = predicted_memory(st)
    except GraphpartError as e:
        return Outcome(s, base, "failed", problem=str(e))
    out = Outcome(s, cfg, "ran", predicted=[with_totals(d.bytes) for d in pred.stages])
    if budget is not None:
        out.problem = budget_problem(pred, budget)
        if out.problem:
            out.status = "does not fit"
            return out

    def on_epoch(row: dict[str, Any]) -> None:
        out.epochs.append(row)
        acc = row.get("test_accuracy")
        log(
            f"  {s.label}: epoch {row['epoch']}/{cfg.train.epochs}  loss {row['train_loss']:.4f}"
            + (f"  test acc {acc:.4f}" if acc is not None else "")
            + f"  ({row['train_s']:.1f} s)"
        )

    t0 = time.perf_counter()
    try:
        # a "device" is `threads` cores: Ray stages pin their BLAS to cpus // K threads, and an
        # in-process strategy gets as many, so one device means the same compute everywhere
        with threadpool_limits(threads if not uses_ray(cfg) else None):
            out.summary = train(cfg, progress=False, log=_silent, on_epoch=on_epoch)
    except GraphpartError as e:
        out.status, out.problem = "failed", str(e)
        return out
    except KeyboardInterrupt:  # the caller stops the comparison and reports what finished
        out.status, out.problem = "interrupted", "stopped by Ctrl-C"
        return out
    finally:
        out.summary.setdefault("wall_s", time.perf_counter() - t0)
    out.ledger = [with_totals(x["peak_by_category"]) for x in out.summary["stage_stats"]]
    out.resident = [int(x["resident_growth"]) for x in out.summary["stage_stats"]]
    return out
