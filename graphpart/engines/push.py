"""RayEngine whose stages run a whole step per call and push boundary tensors to each other.

RayEngine submits every forward and backward as an actor task and hands each boundary tensor
on through the driver, which owns the object reference and pushes the next task once the
producing one reports back: 2MK + K tasks a step, and the driver on every hop. Here the driver
submits one `run_step` per stage (the stage's action list from the schedule, the minibatch to
the first stage, the labels to the last) and each stage sends its outputs straight to its
neighbour's inbox (workers/push.py, workers/actor.py: PushStageActor). Each stage still runs
exactly its schedule's actions in order, so the arithmetic, and the result, are RayEngine's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphpart.errors import StageFailure
from graphpart.engines.tasks import RayEngine, _first_line


class PushRayEngine(RayEngine):
    """One actor per stage, one call per stage a step, tensors pushed stage to stage."""

    actor_class = "PushStageActor"
    step_timeout_s = 600.0  # how long a stage waits for a neighbour's tensor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._step_id = 0
        super().__init__(*args, **kwargs)
        try:
            k = len(self.actors)
            self._get(
                [
                    a.connect.remote(
                        self.actors[i - 1] if i > 0 else None,
                        self.actors[i + 1] if i < k - 1 else None,
                    )
                    for i, a in enumerate(self.actors)
                ]
            )
        except BaseException:
            self.close()
            raise

    def _setup_schedule(self, kind: str, microbatches: int) -> None:
        super()._setup_schedule(kind, microbatches)
        self._acts = [[(a.kind, a.mb) for a in acts] for acts in self.actions]

    def step(self, x: np.ndarray, y: np.ndarray, update: bool = True) -> dict[str, float]:
        n = len(x)
        rows = self._rows(n)
        self._step_id += 1
        step, last = self._step_id, self.plan.k - 1
        x = np.ascontiguousarray(x)
        refs = [
            a.run_step.remote(
                step,
                self._acts[k],
                x if k == 0 else None,
                y if k == last else None,
                rows,
                1.0 / n,
                update,
                self.step_timeout_s,
            )
            for k, a in enumerate(self.actors)
        ]
        return self._totals(self._get_step(refs, step))

    def _get_step(self, refs: list[Any], step: int) -> list[dict[str, float]]:
        """The stages' results; on a failure, wake every stage of the step and re-raise the
        failure that started it (not a neighbour's "stopped" that followed)."""
        import ray

        try:
            return ray.get(refs)
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError):
            pass
        for a in self.actors:
            try:
                a.abort.remote(step, "the step was abandoned after a failure elsewhere")
            except Exception:  # noqa: BLE001 - that actor is gone
                pass
        causes, stops = [], []
        for r in refs:
            try:
                ray.get(r, timeout=60)
            except ray.exceptions.RayTaskError as e:
                msg = _first_line(e)
                (stops if " stopped: " in msg else causes).append(msg)
            except ray.exceptions.RayActorError as e:
                causes.append(f"a stage's worker process died: {_first_line(e)}")
            except ray.exceptions.GetTimeoutError:
                stops.append("a stage did not stop within 60 s of the failure")
        raise StageFailure((causes or stops or ["a stage failed"])[0])
