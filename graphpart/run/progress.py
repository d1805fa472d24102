"""Where a run is: its epoch and step, what it has done since, and its steady throughput."""

from __future__ import annotations

import array
import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Any

WARM_STEPS = 3  # a run's first steps (buffers, kernels, channels): start-up, not steady


@dataclass
class Progress:
    """Where a run is: the epoch and step it starts from, what it has done since."""

    epoch: int = 0
    step: int = 0
    samples: int = 0
    train_time: float = 0.0
    first_loss: float | None = None
    best_loss: float = math.inf  # the best epoch's mean train loss
    best_step_loss: float = math.inf  # the best single step's J
    best_accuracy: float = -math.inf  # the best epoch's test accuracy
    rates: array.array = dataclasses.field(
        default_factory=lambda: array.array("d")
    )  # rows/s a step
    first_steps_s: float = 0.0  # wall seconds of this process's first WARM_STEPS steps
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)

    def restart(self, epoch: int, step: int) -> Progress:
        """After a failure: the place restarts at (epoch, step); what this process measured
        (time, samples, step rates) carries over."""
        return Progress(
            epoch=epoch,
            step=step,
            train_time=self.train_time,
            samples=self.samples,
            rates=self.rates,
            first_steps_s=self.first_steps_s,
        )

    def timed_step(self, rows: int, seconds: float) -> None:
        """Count a step's rate (its wall seconds, the first WARM_STEPS apart)."""
        if len(self.rates) < WARM_STEPS:
            self.first_steps_s += seconds
        self.rates.append(rows / seconds if seconds > 0 else math.inf)

    def throughput(self) -> dict[str, Any]:
        """Steady-state samples/s (the median step's, past the first WARM_STEPS) apart from the
        first steps' time, and the plain mean (samples over training seconds, warm-up
        included)."""
        steady = self.rates[WARM_STEPS:] if len(self.rates) > WARM_STEPS else self.rates
        return {
            "samples_per_s": statistics.median(steady) if steady else None,
            "samples_per_s_mean": self.samples / self.train_time if self.train_time > 0 else None,
            "first_steps": min(WARM_STEPS, len(self.rates)),
            "first_steps_s": self.first_steps_s,
        }
