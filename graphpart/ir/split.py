"""A weight-gradient call in row blocks: the lowering's last one, for data parallelism's
overlap (each block's rows all-reduced while the next computes)."""

from __future__ import annotations

from dataclasses import replace

from graphpart.ir.lower import Lowered


def row_blocks(rows: int, blocks: int) -> tuple[tuple[int, int], ...]:
    """[0, rows) in `blocks` contiguous blocks, the first ones a row longer where it does not
    divide (numpy.array_split's rule)."""
    if not 1 <= blocks <= rows:
        raise ValueError(f"{blocks} row blocks of {rows} rows: need 1 <= blocks <= {rows}")
    q, r = divmod(rows, blocks)
    ends = [0]
    for i in range(blocks):
        ends.append(ends[-1] + q + (i < r))
    return tuple(zip(ends[:-1], ends[1:], strict=True))


def split_last_weight(low: Lowered, blocks: int) -> Lowered:
    """The same lowering with the backward's last weight-gradient call (the stage's first
    layer's: only its input gradient, on a stage that sends one, follows it) run as `blocks`
    calls, one a row block of its gradient, in row order: data parallelism all-reduces each
    block's rows while the next computes (workers/buckets.py). The same buffers; unchanged
    where that call declares no `splits`, is split already, or `blocks` is 1."""
    last = low.weight_calls[-1] if low.weight_calls else None
    if blocks == 1 or last is None or not last.splits or last.param is None or last.rows:
        return low
    rows = int(low.graph.var(last.param).shape[0])
    parts = row_blocks(rows, blocks)
    split = tuple(replace(last, rows=ab, last=i == len(parts) - 1) for i, ab in enumerate(parts))
    steps = tuple(
        replace(
            s,
            backward=tuple(c2 for c in s.backward for c2 in (split if c is last else (c,))),
        )
        for s in low.steps
    )
    return replace(low, steps=steps)
