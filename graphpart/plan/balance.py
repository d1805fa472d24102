"""Contiguous splits of a sequence of items into parts that minimise the largest part cost."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from graphpart.errors import PlanError

Cost = Callable[[int, int, int], float]

# Tie-break (shared by `split` and `balance`): among splits with the same largest part cost,
# take the one whose part costs, sorted from largest to smallest, are lexicographically smallest
# (minimise the max, then the second largest, and so on: "leximax"). Splits that are still tied
# are resolved by taking the lexicographically smallest list of part sizes (earlier parts
# shorter). Both keys are separable (appending the same part to two tied prefixes keeps them
# tied, and keeps a strict order strict), so the dynamic programme below finds the exact optimum.


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _check_counts(n_items: int, n: int, item: str, part: str) -> None:
    if n_items < 1:
        raise PlanError(f"n_items={n_items}: need at least 1 {item} to split")
    if n < 1:
        raise PlanError(f"{part}s={n} is not positive; use 1..{n_items}")
    if n > n_items:
        raise PlanError(f"{part}s={n} exceeds the {_plural(n_items, item)}; use 1..{n_items}")


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _optimal(
    n_items: int, n: int, costs: dict[tuple[int, int, int], float], feasible: Callable[..., bool]
) -> list[int] | None:
    """Leximax-optimal sizes over the precomputed `costs`, or None if nothing is feasible."""
    # best[i] after round p: (sorted-descending part costs, part sizes) for items [0, i) in p parts.
    best: dict[int, tuple[tuple[float, ...], tuple[int, ...]]] = {0: ((), ())}
    for p in range(n):
        nxt: dict[int, tuple[tuple[float, ...], tuple[int, ...]]] = {}
        for stop in range(p + 1, n_items - (n - 1 - p) + 1):
            choice = None
            for start, (key, sizes) in best.items():
                if start >= stop or not feasible(start, stop, p):
                    continue
                c = costs[start, stop, p]
                cand = (tuple(sorted((*key, c), reverse=True)), (*sizes, stop - start))
                if choice is None or cand < choice:
                    choice = cand
            if choice is not None:
                nxt[stop] = choice
        best = nxt
    result = best.get(n_items)
    return None if result is None else list(result[1])


def split(
    n_items: int,
    n: int,
    cost: Cost,
    limit: Callable[[int], float] | None = None,
    *,
    item: str = "item",
    part: str = "part",
    fmt: Callable[[float], str] = _fmt,
) -> list[int]:
    """Split items 0..n_items-1 into `n` non-empty contiguous parts; return the part sizes.

    Minimises max over parts p of ``cost(start, stop, p)`` (items [start, stop) form part p,
    parts in order), subject to ``cost(start, stop, p) <= limit(p)`` when `limit` is given.
    Ties are broken as described at the top of this module. `item`, `part` and `fmt` only shape
    error messages (e.g. ``item="layer", part="stage", fmt=lambda b: f"{b / 2**20:.2f} MB"``).
    If no split fits the limits, raises PlanError naming the part that misses its limit by the
    most in the split that minimises the largest excess ``cost - limit``.
    """
    _check_counts(n_items, n, item, part)
    costs: dict[tuple[int, int, int], float] = {}
    for p in range(n):
        for start in range(p, n_items - (n - 1 - p)):
            for stop in range(start + 1, n_items - (n - 1 - p) + 1):
                c = float(cost(start, stop, p))
                if not math.isfinite(c):
                    raise PlanError(
                        f"cost({start}, {stop}, {p}) returned {c}; costs must be finite numbers"
                    )
                costs[start, stop, p] = c
    if limit is None:
        sizes = _optimal(n_items, n, costs, lambda *_: True)
        assert sizes is not None  # every split is feasible without limits
        return sizes

    limits = [float(limit(p)) for p in range(n)]
    for p, lim in enumerate(limits):
        if math.isnan(lim):
            raise PlanError(f"limit({p}) returned nan; limits must be numbers (inf for none)")
    sizes = _optimal(n_items, n, costs, lambda s, e, p: costs[s, e, p] <= limits[p])
    if sizes is not None:
        return sizes

    excess = {(s, e, p): c - limits[p] for (s, e, p), c in costs.items()}
    best = _optimal(n_items, n, excess, lambda *_: True)
    assert best is not None
    start, worst, worst_excess = 0, 0, -math.inf
    for p, size in enumerate(best):
        over = excess[start, start + size, p]
        if over > worst_excess:
            worst, worst_excess = p, over
        start += size
    raise PlanError(
        f"no split of {_plural(n_items, item)} into {_plural(n, part)} fits the budgets: "
        f"{part} {worst} needs {fmt(worst_excess)} more than its {fmt(limits[worst])} budget "
        f"(best split {best})"
    )


def balance(costs: Sequence[float], n: int) -> list[int]:
    """Split `costs` into `n` non-empty contiguous parts minimising the largest part sum.

    Returns the part sizes (they sum to ``len(costs)``); ties as in `split` (leximax part sums,
    then earlier parts shorter). Part sums use `math.fsum`, so they are correctly rounded.
    """
    values = [float(c) for c in costs]
    for i, c in enumerate(values):
        if not math.isfinite(c) or c < 0:
            raise PlanError(f"costs[{i}]={c} is invalid; costs must be finite and >= 0")
    if not values:
        raise PlanError("costs is empty; need at least 1 item cost to split")
    _check_counts(len(values), n, "item", "part")
    sums: dict[tuple[int, int], float] = {}

    def part_sum(start: int, stop: int, _p: int) -> float:
        if (start, stop) not in sums:
            sums[start, stop] = math.fsum(values[start:stop])
        return sums[start, stop]

    return split(len(values), n, part_sum)


def uniform(n_items: int, n: int) -> list[int]:
    """Split `n_items` into `n` near-equal counts, the remainder going to the first parts."""
    _check_counts(n_items, n, "item", "part")
    base, extra = divmod(n_items, n)
    return [base + 1 if p < extra else base for p in range(n)]
