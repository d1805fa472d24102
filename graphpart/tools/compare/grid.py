"""Strategy h of a comparison: R replicas of a K-stage pipeline (2-D) on the devices, chosen
by a fixed rule (or by plan --auto's ranking), as one more Strategy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from graphpart.plan.auto import Candidate

MIN_DEVICES = 4  # the smallest grid with both axes: 2 replicas of a 2-stage pipeline
KEY = "h"


@dataclass(frozen=True)
class GridShape:
    """One 2-D setup: `replicas` copies of a `stages`-stage pipeline, each replica's share of
    the minibatch in `microbatches` micro-batches; `source` says who chose it."""

    replicas: int
    stages: int
    microbatches: int
    schedule: str = "1f1b"
    recompute: bool = False
    source: str = "rule"  # "rule" | "plan --auto"

    @property
    def devices(self) -> int:
        return self.replicas * self.stages

    def overrides(self, transport: str) -> dict[str, Any]:
        """The config keys of this setup (`transport`: one replicas run on)."""
        return {
            "pipeline.stages": self.stages,
            "pipeline.microbatches": self.microbatches,
            "pipeline.data_parallel": self.replicas,
            "pipeline.schedule": self.schedule,
            "pipeline.recompute": self.recompute,
            "pipeline.transport": transport,
        }

    def title(self) -> str:
        sched = {"gpipe": "GPipe", "1f1b": "1F1B"}.get(self.schedule, self.schedule)
        return (
            f"{self.replicas} replicas of a {self.stages}-stage pipeline, {sched}, "
            f"{self.microbatches} micro-batch{'es' if self.microbatches != 1 else ''} per replica"
            + (", recomputed activations" if self.recompute else "")
            + f", ring all-reduce per stage ({self.source})"
        )


def grid_shape(devices: int, n_layers: int, batch: int, microbatches: int) -> GridShape | None:
    """The 2-D setup compare runs on `devices` devices, or None below MIN_DEVICES (or where
    no grid fits the model and the minibatch).

    R >= 2 replicas of a K >= 2-stage pipeline, K at most `n_layers`, R at most `batch` rows:
    the most devices R x K <= `devices` (as the other strategies use them all), then the
    squarest grid, then more replicas than stages (a replica's all-reduce runs once a step, a
    pipeline's hops once a micro-batch). 1F1B, as strategy e; each replica's micro-batches
    as many rows as the pipelines' (`microbatches` over the minibatch): ceil(M / R) of them,
    at most a replica's floor(B / R) rows.
    """
    if devices < MIN_DEVICES:
        return None
    shapes = [
        (r, k)
        for r in range(2, min(devices // 2, batch) + 1)
        for k in range(2, min(devices // r, n_layers) + 1)
    ]
    if not shapes:
        return None
    r, k = min(shapes, key=lambda s: (-s[0] * s[1], abs(s[0] - s[1]), -s[0]))
    m = max(1, min(-(-microbatches // r), batch // r))
    return GridShape(r, k, m)


def auto_grid_shape(candidates: Sequence[Candidate]) -> GridShape | None:
    """plan --auto's best-ranked 2-D setup that fits (`candidates` in rank order), if any."""
    best = next((c for c in candidates if c.kind == "2-d" and c.fits), None)
    if best is None:
        return None
    return GridShape(
        best.replicas,
        best.stages,
        best.microbatches,
        best.schedule,
        best.recompute,
        "plan --auto",
    )
