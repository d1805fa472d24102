"""Inference over a transport: chunks of rows through chains of workers, small enough to stay
out of Ray's object store.

A Ray call's arguments and result under Ray's inline limit (`max_direct_call_object_size`,
100 KiB) travel inside the call itself; larger ones are put in the object store, whose pages
are mapped into every worker that writes or reads them: one evaluation of 2 560 rows grew a
stage of the wide model by 17-30 MiB of shared pages, never given back. So on Ray a chunk has
as many rows as keep its widest tensor (the input, or any stage's output) under INLINE_BYTES,
and `in_flight` chunks are under way at once so the stages (or replicas) overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphpart.engines.transport import Calls
from graphpart.ir.graph import BATCH, Graph

INLINE_BYTES = 96 * 1024  # under Ray's 100 KiB inline limit, with room for the call's framing


def batch_widths(graph: Graph) -> list[int]:
    """Elements a row of every batch-major value of `graph` (inputs, activations, logits)."""
    return [
        math.prod(v.concrete_shape(1))
        for v in graph.vars
        if not v.is_param and v.shape and v.shape[0] == BATCH
    ]


def inline_rows(widths: Sequence[int], itemsize: int) -> int:
    """Rows per chunk so that a tensor of each width (elements a row) fits INLINE_BYTES."""
    return max(1, INLINE_BYTES // (max(max(widths), 1) * int(itemsize)))


def predict(
    transport: Calls,
    x: np.ndarray,
    rows: int,
    chains: Sequence[Sequence[int]],
    in_flight: int,
) -> np.ndarray:
    """Outputs for every row of x: chunk i of `rows` rows goes through the workers
    chains[i % len(chains)] in order, at most `in_flight` chunks under way at once."""
    outs: list[np.ndarray] = []
    pending: list[Any] = []
    for i, start in enumerate(range(0, len(x), rows)):
        h: Any = np.ascontiguousarray(x[start : start + rows])
        for k in chains[i % len(chains)]:
            h = transport.call(k, "infer", h)
        pending.append(h)
        if len(pending) >= in_flight:
            outs += transport.get([pending.pop(0)])
    outs += transport.get(pending) if pending else []
    return np.concatenate(outs) if outs else np.zeros((0, 0))
