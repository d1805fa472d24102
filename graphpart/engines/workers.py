"""What Engine and DataParallel share: their workers behind one transport, asked all at once."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Self

from graphpart.engines.transport import Transport
from workers.stats import StageStats


class Workers(ABC):
    """The calls to every worker of an engine (`n_workers` of them, in the engine's order) and
    its life as a context manager."""

    transport: Transport

    @property
    @abstractmethod
    def n_workers(self) -> int: ...

    def _all(self, method: str, *args: Any) -> list[Any]:
        """`method` on every worker, in order."""
        return self.transport.get(
            [self.transport.call(i, method, *args) for i in range(self.n_workers)]
        )

    def stats(self) -> list[StageStats]:
        """One StageStats per worker, in order (its `stage` is the worker's index)."""
        return self._all("stats")

    def events(self) -> list[list]:
        return self._all("events")

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
