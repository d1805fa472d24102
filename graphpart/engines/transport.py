"""The transport seam: what an engine needs from whatever moves its calls and tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from graphpart.engines.wiring import StepFeed, StepWiring, drive, drive_inference
from workers.stage import WorkerSpec
from workers.stats import Finish


class Calls(Protocol):
    """Method calls on workers: what state, inference and stats need (a pipeline's transport,
    or the data-parallel ring).

    `call` issues one method call on one worker and returns a handle (a value, an object
    reference); `get` waits for handles and returns their values, raising StageFailure (one
    line naming the stage and action) when a stage failed.
    """

    in_process: bool  # the workers are objects in this process (calls return their values)

    def call(self, stage: int, method: str, *args: Any) -> Any: ...

    def get(self, handles: Sequence[Any]) -> list[Any]: ...


class Transport(Calls, Protocol):
    """Starts one worker per stage and carries the engine's calls to them (`Calls`).

    `run_step` runs one training step of the wiring and returns each stage's `finish` result,
    in stage order; `run_inference` one inference step.

    Built as `cls(address=, num_cpus=, step_timeout_s=)`: the Ray cluster to join (empty:
    start one here), its CPUs, and how long the driver waits for a step before naming the
    stages that stalled (0: from the measured step times; the in-process transport ignores
    all three).
    """

    name: str

    def start(self, specs: Sequence[WorkerSpec]) -> None: ...

    def run_step(self, wiring: StepWiring, feed: StepFeed[np.ndarray]) -> list[Finish]: ...

    def run_inference(self, wiring: StepWiring, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The last stage's outputs of an inference wiring (wiring.wire_inference) over the
        micro-batch inputs `xs`, by micro-batch."""
        ...

    def close(self) -> None: ...


def walk_step(transport: Transport, wiring: StepWiring, feed: StepFeed[np.ndarray]) -> list[Finish]:
    """`run_step` for transports whose driver issues every action through `call` (`drive`).

    It waits on the leaves too (the last stage's forwards, the first stage's backwards), so a
    failure there surfaces here rather than being dropped.
    """
    return transport.get(drive(wiring, feed, transport.call))[-wiring.k :]


def walk_inference(
    transport: Transport, wiring: StepWiring, xs: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """`run_inference` for transports whose driver issues every call (`drive_inference`)."""
    return transport.get(drive_inference(wiring, xs, transport.call))
