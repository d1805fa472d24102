"""The Workload record: what a training step is asked to do, besides the plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphpart.optim import Optimizer, make_optimizer
from graphpart.plan.batching import microbatch_rows, split_batch


@dataclass(frozen=True)
class Workload:
    """What a training step is asked to do, besides the plan: a `batch`-row minibatch in
    `microbatches` micro-batches under `schedule` (with `chunks` virtual stages a device
    where it has them), `optimizer` (a name with its `momentum`, or
    an Optimizer), `dtype`, and whether backward recomputes the forward (`recompute`). The
    run's config gives it once (graphpart.run.setup.workload_of); the memory model and the
    search read it."""

    batch: int
    microbatches: int = 1
    schedule: str = "1f1b"
    optimizer: str | Optimizer = "adam"
    momentum: float = 0.9
    dtype: Any = "float32"
    recompute: bool = False
    chunks: int = 0  # virtual stages a device (interleaved, zbv; 0: the schedule's own)

    @property
    def slots(self) -> int:
        """Optimizer state buffers per parameter."""
        return optimizer_slots(self.optimizer, self.momentum)

    @property
    def rows(self) -> int:
        """Rows of a micro-batch buffer, ceil(batch / microbatches) (validated)."""
        split_batch(self.batch, self.microbatches)  # validates 1 <= microbatches <= batch
        return microbatch_rows(self.batch, self.microbatches)

    @property
    def optimizer_name(self) -> str:
        o = self.optimizer
        return o if isinstance(o, str) else o.name


def optimizer_slots(optimizer: str | Optimizer, momentum: float = 0.9) -> int:
    """State buffers per parameter: SGD 0 (1 with momentum), Adam 2 (from graphpart.optim)."""
    if isinstance(optimizer, str):
        return make_optimizer(optimizer, lr=1.0, momentum=momentum).state_slots
    return int(optimizer.state_slots)
