"""Transport `tasks`: the driver submits every action as an actor task; tensors travel as
object references it passes from one stage's task to the next.

Ray runs one caller's tasks on an actor in submission order, each once its arguments are
ready, so submitting in the wiring's order makes every stage run exactly its schedule. The
driver is on every hop and makes 2MK + K submissions a step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphpart.engines.transport import walk_inference
from graphpart.engines.transports.actors import RayActors
from graphpart.engines.wiring import StepFeed, StepWiring, drive
from graphpart.errors import StageFailure
from workers.stats import Finish


class Tasks(RayActors):
    """A task per action, object references between stages."""

    name = "tasks"
    virtual_stages = True  # the driver calls each virtual stage's chunk on its device's actor

    def __init__(
        self, address: str = "", num_cpus: int | None = None, step_timeout_s: float = 0.0
    ) -> None:
        super().__init__(address, num_cpus, step_timeout_s)
        self._step_id = 0

    def run_step(self, wiring: StepWiring, feed: StepFeed[np.ndarray]) -> list[Finish]:
        import ray

        self._step_id += 1
        issued: list[tuple[int, Any]] = []  # (stage, handle) in submission order

        def call(stage: int, method: str, *args: Any) -> Any:
            h = self.call(stage, method, *args)
            issued.append((stage, h))
            return h

        t0, deadline = time.perf_counter(), self.deadline_s()
        wait = drive(wiring, feed, call)  # the leaves, then the K finishes
        pending = list(wait)
        while pending:  # each result as it comes: a failure ends the wait
            left = t0 + deadline - time.perf_counter()
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, left))
            if not ready:
                raise StageFailure(self._stalled(issued, deadline, time.perf_counter() - t0))
            self.get(ready)  # a stage's error or death, as one line
        self.timed(t0)
        return self.get(wait)[-wiring.k :]

    def run_inference(self, wiring: StepWiring, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return walk_inference(self, wiring, xs)

    def _stalled(self, issued: list[tuple[int, Any]], deadline: float, elapsed: float) -> str:
        """A stopped stage, else the stage of the earliest action that has not run."""
        import ray

        handles = [h for _, h in issued]
        done, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        first = next((k for k, h in issued if h not in done), None)
        stopped = self.stopped()
        who = stopped or ([] if first is None else [first])
        what = "stopped answering" if stopped else "did not finish"
        return self.stall_message(who, what, self._step_id, deadline, elapsed, bool(stopped))
