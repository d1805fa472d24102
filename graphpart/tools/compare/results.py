"""A comparison's figures: one row of numbers per strategy, the target, and the JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graphpart.plan.auto import Candidate
from graphpart.plan.auto import to_dict as candidate_dict
from graphpart.run.config import Config
from graphpart.tools.compare.project import Projection
from graphpart.tools.compare.runner import Outcome

STATE = ("parameter", "gradient", "optimizer")  # what partitioning divides and batching does not


@dataclass
class Comparison:
    """Everything `graphpart compare` measured and decided, in strategy order."""

    base: Config
    devices: int
    microbatches: int
    lr_rule: str
    budget: int | None
    threads: int  # cores per device on this machine
    cores: int  # cores of this machine
    hop_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    projections: dict[str, Projection | None] = field(default_factory=dict)
    auto: list[Candidate] = field(default_factory=list)
    auto_pick: Candidate | None = None  # the one run as strategy "auto"
    target: float | None = None  # test accuracy (classification) or test loss (regression)
    interrupted: bool = False

    @property
    def metric(self) -> str:
        return "test_loss" if self.base.model.loss == "mse" else "test_accuracy"

    def ran(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ran]

    def choose_target(self, given: float | None) -> None:
        """The level time-to-target is measured at: `given`, else 95% of the best final test
        accuracy (classification) or 105% of the best final test loss (regression)."""
        if given is not None:
            self.target = given
            return
        finals = [o.epochs[-1].get(self.metric) for o in self.ran() if o.epochs]
        finals = [f for f in finals if f is not None]
        if not finals:
            return
        self.target = (
            round(0.95 * max(finals), 4)
            if self.metric == "test_accuracy"
            else round(1.05 * min(finals), 6)
        )

    def time_to_target(self, o: Outcome) -> tuple[float, int] | None:
        """(training seconds, epoch) when `o` first reached the target, or None."""
        if self.target is None:
            return None
        for row in o.epochs:
            v = row.get(self.metric)
            if v is None:
                continue
            hit = v >= self.target if self.metric == "test_accuracy" else v <= self.target
            if hit:
                return float(row["train_s"]), int(row["epoch"])
        return None

    def row(self, o: Outcome) -> dict[str, Any]:
        """One strategy's figures (JSON-ready)."""
        s = o.strategy
        r: dict[str, Any] = {
            "key": s.key,
            "name": s.name,
            "title": s.title,
            "devices": s.devices,
            "status": o.status,
            "problem": o.problem,
            "config": {k: v for k, v in s.overrides.items()},
            "predicted_memory": o.predicted,
            "ledger_memory": o.ledger,  # per device and category: the workers' accounting
            "resident_growth": o.resident,  # per device: what the OS measured
            "predicted_peak": o.peak("predicted"),
            "ledger_peak": o.peak("ledger") if o.ledger else None,
            "measured_peak": o.peak("measured") if o.resident else None,
        }
        if s.key == "auto" and self.auto_pick is not None:
            r["auto_predicted_samples_per_s"] = self.auto_pick.samples_per_s
            r["auto_predicted_peak"] = self.auto_pick.max_peak
        if not o.ran or not o.steps:
            return r
        sm, steps = o.summary, o.steps
        proj = self.projections.get(s.key)
        last = o.epochs[-1] if o.epochs else {}
        ttt = self.time_to_target(o)
        r.update(
            {
                "steps": steps,
                "epochs": len(o.epochs),
                "batch": o.config.train.batch_size,
                "lr": o.config.train.lr,
                "step_s": sm["train_s"] / steps,
                "samples_per_s": sm["samples_per_s"],
                "projected_step_s": proj.step_s if proj else None,
                "projected_samples_per_s": proj.samples_per_s if proj else None,
                "projection_basis": proj.basis if proj else None,
                "bubble": proj.bubble if proj else None,
                "comm_bytes_per_step": sum(x["bytes_sent"] for x in sm["stage_stats"]) / steps,
                "final_train_loss": last.get("train_loss"),
                "final_test_loss": last.get("test_loss"),
                "final_test_accuracy": last.get("test_accuracy"),
                "time_to_target_s": ttt[0] if ttt else None,
                "epochs_to_target": ttt[1] if ttt else None,
                "curve": [
                    {
                        k: row.get(k)
                        for k in ("epoch", "train_s", "train_loss", "test_loss", "test_accuracy")
                    }
                    for row in o.epochs
                ],
                "run_dir": sm.get("run_dir"),
            }
        )
        return r

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "microbatches": self.microbatches,
            "lr_rule": self.lr_rule,
            "memory_budget": self.budget,
            "cores_per_device": self.threads,
            "cores": self.cores,
            "hop_s": self.hop_s,
            "target": {"metric": self.metric, "value": self.target},
            "interrupted": self.interrupted,
            "config": self.base.to_dict(),
            "strategies": [self.row(o) for o in self.outcomes],
            "auto": [candidate_dict(c) for c in self.auto],
        }


def state_bytes(per_device: dict[str, int]) -> int:
    return sum(per_device.get(c, 0) for c in STATE)


UNITS = (("B", 1), ("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30))


def byte_unit(values: list[float | int | None]) -> tuple[str, int]:
    """One unit for a column or an axis, picked from its data: the largest unit in which the
    largest value is at least 1 (B, KiB, MiB, GiB), so every figure of it reads alike."""
    top = max((abs(v) for v in values if v), default=0)
    name, size = UNITS[0]
    for n, s in UNITS:
        if top >= s:
            name, size = n, s
    return name, size


def in_unit(n: float | int | None, unit: tuple[str, int]) -> str:
    """`n` bytes as a number of `unit` (no unit name: the header or axis carries it)."""
    if n is None:
        return "-"
    return f"{n:,.0f}" if unit[1] == 1 else f"{n / unit[1]:,.2f}"


def memory_unit(c: Comparison) -> tuple[str, int]:
    """The unit of every per-device memory figure of `c`'s table and memory plot: from the
    predicted peaks (every strategy has one, run or not)."""
    return byte_unit([o.peak("predicted") for o in c.outcomes])
