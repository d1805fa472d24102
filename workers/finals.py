"""Which gradients a backward's calls make final, and how far: what data parallelism's
overlap starts its buckets on (workers/buckets.py)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from graphpart.ir.lower import KernelCall, Lowered


class Final(NamedTuple):
    """Parameter `name`'s gradient is final in its first `upto` elements (flattened)."""

    name: str
    upto: int


def row_blocks_of(low: Lowered, split_bytes: int, dtype: np.dtype) -> int:
    """Row blocks of at least `split_bytes` for the lowering's last weight gradient (1: whole;
    so for split_bytes <= 0, or a gradient below twice that)."""
    calls = low.weight_calls
    if split_bytes <= 0 or not calls or calls[-1].param is None:
        return 1
    shape = low.graph.var(calls[-1].param).shape
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, min(int(shape[0]), size // int(split_bytes)))


def block_ends(low: Lowered) -> dict[str, tuple[int, ...]]:
    """Where a gradient written in row blocks is final block by block: its elements at each
    block's end but the last (the partial Finals of a backward's weight calls)."""
    out: dict[str, list[int]] = {}
    for done in finals(low, low.weight_calls):
        for name, upto in done:
            if upto < _size(low, name):
                out.setdefault(name, []).append(upto)
    return {k: tuple(v) for k, v in out.items()}


def grad_order(low: Lowered) -> list[str]:
    """The parameters in the order their gradients become final in a backward: as the
    lowering's weight-gradient calls write them, then any the calls never write."""
    names = [c.param for c in low.weight_calls if c.param is not None]
    return [*dict.fromkeys(names), *(n for n in low.params if n not in names)]


def finals(low: Lowered, calls: tuple[KernelCall, ...]) -> list[tuple[Final, ...]]:
    """Per call, the gradients no later call of `calls` writes, as far as it wrote them: the
    whole of it, or up to a row block's end (KernelCall.rows)."""
    last = {c.param: i for i, c in enumerate(calls) if c.param is not None and c.last}
    out: list[tuple[Final, ...]] = []
    for j, c in enumerate(calls):
        done = [Final(p, _size(low, p)) for p, i in last.items() if i == j]
        if c.rows is not None and c.param is not None and not c.last and j < last[c.param]:
            done.append(Final(c.param, c.rows[1] * _size(low, c.param, first=1)))
        out.append(tuple(done))
    return out


def _size(low: Lowered, name: str, first: int = 0) -> int:
    """Elements of parameter `name` (from its axis `first` on: 1 gives a row's)."""
    return int(np.prod(low.graph.var(name).shape[first:], dtype=np.int64))
