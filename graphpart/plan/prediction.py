"""The memory model's records: the buffers of a stage and a run's predicted peaks per stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graphpart.ir.lower import CATEGORIES
from graphpart.units import human_bytes, table


@dataclass(frozen=True)
class Buffer:
    """One buffer the executor will allocate, named exactly as the worker's ledger names it."""

    name: str
    category: str
    nbytes: int


@dataclass(frozen=True)
class StageMemory:
    """Predicted peak bytes of one stage, by category, and the buffers that make them up."""

    index: int
    rows: int  # rows per micro-batch buffer (ceil(batch / microbatches))
    in_flight: int  # activation slots: the schedule's peak in-flight micro-batches
    buffers: tuple[Buffer, ...]
    bytes: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        by = dict.fromkeys(CATEGORIES, 0)
        for b in self.buffers:
            by[b.category] += b.nbytes
        object.__setattr__(self, "bytes", by)

    @property
    def total(self) -> int:
        return sum(self.bytes.values())

    def entries(self) -> dict[str, tuple[str, int]]:
        """{buffer name: (category, bytes)}, comparable with Ledger.snapshot()["entries"]."""
        return {b.name: (b.category, b.nbytes) for b in self.buffers}


@dataclass(frozen=True)
class MemoryPrediction:
    """Per-stage predicted peak memory of a training run (see `predict`)."""

    stages: tuple[StageMemory, ...]
    batch: int
    microbatches: int
    schedule: str
    optimizer: str
    dtype: str
    recompute: bool
    replicas: int = 1  # R: data-parallel copies (of the model, or of a pipeline's stages)

    @property
    def total(self) -> int:
        return sum(s.total for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "microbatches": self.microbatches,
            "schedule": self.schedule,
            "optimizer": self.optimizer,
            "dtype": self.dtype,
            "recompute": self.recompute,
            "replicas": self.replicas,
            "total": self.total,
            "stages": [
                {
                    "stage": s.index,
                    "rows": s.rows,
                    "in_flight": s.in_flight,
                    "bytes": dict(s.bytes),
                    "total": s.total,
                }
                for s in self.stages
            ],
        }

    def table(self) -> str:
        dp = self.schedule == DATA_PARALLEL
        grid = self.replicas > 1 and not dp  # R replicas of a pipeline: worker (r, k)
        k = len(self.stages) // self.replicas
        unit = "replica" if dp else "stage"
        headers = [
            "category",
            *(
                f"r{s.index // k} s{s.index % k}" if grid else f"{unit} {s.index}"
                for s in self.stages
            ),
        ]
        rows = [[c, *(human_bytes(s.bytes[c]) for s in self.stages)] for c in CATEGORIES]
        rows.append(["total", *(human_bytes(s.total) for s in self.stages)])
        rows.append(["in-flight", *(str(s.in_flight) for s in self.stages)])
        split = (
            f"over {len(self.stages)} data-parallel replicas"
            + (f" in {self.microbatches} micro-batch(es) each" if self.microbatches > 1 else "")
            if dp
            else f"over {self.replicas} replicas of a {k}-stage pipeline, each "
            f"{-(-self.batch // self.replicas)} rows in {self.microbatches} micro-batch(es)"
            if grid
            else f"in {self.microbatches} micro-batch(es)"
        )
        head = (
            f"predicted peak memory: batch {self.batch} {split}"
            f" of <= {self.stages[0].rows} rows, {self.schedule}, {self.optimizer}, "
            f"{self.dtype}" + (", recompute" if self.recompute else "")
        )
        return head + "\n" + table(headers, rows)


DATA_PARALLEL = "data-parallel"  # MemoryPrediction.schedule of predict_data_parallel
