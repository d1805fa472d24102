"""Micro-batching: the row ranges of a minibatch's micro-batches, and the rows a buffer holds."""

from __future__ import annotations

import numpy as np

from graphpart.errors import PlanError


def split_batch(n: int, microbatches: int) -> list[slice]:
    """Row ranges of `microbatches` near-equal micro-batches of an n-row batch (none empty)."""
    if microbatches < 1:
        raise PlanError(f"microbatches={microbatches}: must be a positive integer")
    if microbatches > n:
        raise PlanError(f"microbatches={microbatches} exceeds the batch of {n} rows; use 1..{n}")
    bounds = np.linspace(0, n, microbatches + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def microbatch_rows(batch: int, microbatches: int) -> int:
    """Rows of the largest micro-batch of a `batch`-row minibatch: ceil(batch / microbatches),
    what every per-micro-batch buffer holds (at least 1)."""
    return max(1, -(-int(batch) // max(1, int(microbatches))))
