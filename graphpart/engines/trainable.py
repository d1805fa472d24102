"""The Trainable seam: what the training loop, checkpoints and reports need from an engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from graphpart.plan.stages import Plan
from workers.stats import StageStats

if TYPE_CHECKING:
    from graphpart.engines.engine import StepResult


@runtime_checkable
class Trainable(Protocol):
    """Steps, gradients, inference and state of a model spread over workers.

    graphpart.engines.Engine (a pipeline) and graphpart.engines.DataParallel (replicas) both
    satisfy it, so the training loop takes either. `get_state` gives one state per stage (a
    data-parallel run: replica 0's, one stage's), which `set_state` of either loads.
    """

    plan: Plan
    max_rows: int
    chunk: int  # rows a worker's buffers hold

    @property
    def kind(self) -> str: ...

    @property
    def microbatches(self) -> int: ...

    def step(self, x: np.ndarray, y: np.ndarray, update: bool = True) -> StepResult: ...

    def value_and_grad(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[float, dict[str, np.ndarray]]: ...

    def predict(self, x: np.ndarray, chunk: int | None = None) -> np.ndarray: ...

    def get_params(self) -> dict[str, np.ndarray]: ...

    def get_state(self, live: bool = False) -> list[dict]: ...

    def set_state(self, states: Sequence[Mapping]) -> None: ...

    def stats(self) -> list[StageStats]: ...

    def events(self) -> list[list]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Trainable: ...

    def __exit__(self, *exc: Any) -> None: ...
