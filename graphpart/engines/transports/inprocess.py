"""Transport `inprocess`: every stage's worker in this process, one action at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphpart.engines.transport import walk_inference, walk_step
from graphpart.engines.wiring import StepFeed, StepWiring
from workers.stage import StageWorker, WorkerSpec
from workers.stats import Finish


class InProcess:
    """Stage workers as plain objects; a call is a method call, its handle the value."""

    name = "inprocess"
    in_process = True
    virtual_stages = True  # a stage's worker each, called by virtual stage: no device grouping

    def __init__(
        self, address: str = "", num_cpus: int | None = None, step_timeout_s: float = 0.0
    ) -> None:
        del address, num_cpus, step_timeout_s  # no Ray, and a step here never hangs unseen
        self.workers: list[StageWorker] = []

    def start(self, specs: Sequence[WorkerSpec], owner: Sequence[int] = ()) -> None:
        del owner  # in one process a device's chunks are its stages' workers, side by side
        self.workers = [s.build() for s in specs]

    def call(self, stage: int, method: str, *args: Any) -> Any:
        out = getattr(self.workers[stage], method)(*args)
        # a worker's outputs are views of its buffers, valid until its next call
        return out.copy() if isinstance(out, np.ndarray) else out

    def get(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)

    def run_step(self, wiring: StepWiring, feed: StepFeed[np.ndarray]) -> list[Finish]:
        return walk_step(self, wiring, feed)

    def run_inference(self, wiring: StepWiring, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return walk_inference(self, wiring, xs)

    def close(self) -> None:
        self.workers = []
