"""Contract of graphpart.plan.balance.

`balance` returns the sizes of n non-empty contiguous parts whose largest sum is minimal, and
among those the one whose descending-sorted part sums are lexicographically smallest (then
earlier parts shorter). `uniform` spreads the remainder over the first parts. `split` minimises
the largest index-dependent part cost subject to per-part limits, and when nothing fits, raises
PlanError naming the part, the missing amount, its budget and the best split. Bad arguments
raise PlanError with one line naming the value.
"""

import itertools
import math
import random
import re

import pytest

from graphpart.errors import PlanError
from graphpart.plan.balance import balance, split, uniform


def compositions(total: int, n: int):
    """Every list of n positive sizes summing to total."""
    for cuts in itertools.combinations(range(1, total), n - 1):
        bounds = (0, *cuts, total)
        yield [b - a for a, b in zip(bounds, bounds[1:], strict=False)]


def part_sums(costs, sizes):
    out, start = [], 0
    for size in sizes:
        out.append(math.fsum(costs[start : start + size]))
        start += size
    return out


def leximax_key(costs, sizes):
    return sorted(part_sums(costs, sizes), reverse=True), sizes


@pytest.mark.parametrize("seed", range(40))
def test_balance_matches_brute_force(seed):
    rng = random.Random(seed)
    n_items = rng.randint(1, 8)
    n = rng.randint(1, n_items)
    if seed % 2:
        costs = [rng.randint(0, 5) for _ in range(n_items)]  # many ties
    else:
        costs = [rng.uniform(0, 10) for _ in range(n_items)]
    sizes = balance(costs, n)
    assert len(sizes) == n and sum(sizes) == n_items and min(sizes) >= 1
    best = min(compositions(n_items, n), key=lambda s: leximax_key(costs, s))
    assert sizes == best


def test_balance_examples():
    assert balance([1, 2, 3, 4, 5, 6], 3) == [3, 2, 1]  # sums 6, 9, 6
    assert balance([5], 1) == [1]
    assert balance([1, 1, 1, 1], 4) == [1, 1, 1, 1]
    # equal sorted sums (3, 1) either way: the earlier part is kept shorter
    assert balance([1, 2, 1], 2) == [1, 2]
    # after the max (10), the second largest sum is minimised: 10, 2, 2 beats 10, 3, 1
    assert balance([10, 1, 1, 1, 1], 3) == [1, 2, 2]
    assert balance([0, 0, 0], 2) == [1, 2]


@pytest.mark.parametrize(
    ("costs", "n", "fragment"),
    [
        ([1, 2], 0, "parts=0"),
        ([1, 2], 3, "parts=3 exceeds the 2 items; use 1..2"),
        ([], 1, "costs is empty"),
        ([1, -1], 1, "costs[1]=-1.0"),
        ([1, math.nan], 1, "costs[1]=nan"),
        ([math.inf], 1, "costs[0]=inf"),
    ],
)
def test_balance_rejects_bad_arguments(costs, n, fragment):
    with pytest.raises(PlanError, match=re.escape(fragment)) as info:
        balance(costs, n)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("n_items", "n", "expected"),
    [(7, 3, [3, 2, 2]), (6, 3, [2, 2, 2]), (5, 1, [5]), (5, 5, [1] * 5), (8, 3, [3, 3, 2])],
)
def test_uniform(n_items, n, expected):
    assert uniform(n_items, n) == expected


def test_uniform_rejects_bad_arguments():
    with pytest.raises(PlanError, match="parts=4 exceeds the 3 items"):
        uniform(3, 4)
    with pytest.raises(PlanError, match="parts=0"):
        uniform(3, 0)
    with pytest.raises(PlanError, match="n_items=0"):
        uniform(0, 1)


def test_split_index_dependent_cost_matches_brute_force():
    # stage p of 3 holds (3 - p) micro-batches of activations: earlier stages cost more per layer
    layers = [2.0, 1.0, 3.0, 1.0, 2.0, 2.0, 1.0]
    n = 3

    def cost(start, stop, p):
        return math.fsum(layers[start:stop]) * (n - p)

    def key(sizes):
        bounds = list(itertools.accumulate([0, *sizes]))
        parts = [cost(bounds[p], bounds[p + 1], p) for p in range(n)]
        return sorted(parts, reverse=True), sizes

    sizes = split(len(layers), n, cost)
    assert sizes == min(compositions(len(layers), n), key=key)
    assert sizes[0] < sizes[-1]  # the expensive first stage gets fewer layers


def test_split_respects_limits():
    # compute is balanced by an even split, but part 0 may only hold 1 item
    sizes = split(6, 3, lambda s, e, p: e - s, limit=lambda p: 1 if p == 0 else math.inf)
    assert sizes == [1, 2, 3]  # max 3; ties with [1, 3, 2], and earlier parts are kept shorter


def test_split_fits_exactly_at_the_limit():
    assert split(4, 2, lambda s, e, p: float(e - s), limit=lambda p: 2.0) == [2, 2]


def test_split_reports_missing_amount():
    def activation_bytes(start, stop, p):
        return (stop - start) * 1.5e6 * (3 - p)  # 4.5, 3.0, 1.5 MB per layer on stages 0, 1, 2

    with pytest.raises(PlanError) as info:
        split(
            6,
            3,
            activation_bytes,
            limit=lambda p: 4e6,
            item="layer",
            part="stage",
            fmt=lambda b: f"{b / 1e6:.2f} MB",
        )
    # least-bad split: excesses 0.5, -1.0, 2.0 MB (max 2.0, then 0.5 beats [1, 2, 3]'s 0.5, 0.5)
    assert str(info.value) == (
        "no split of 6 layers into 3 stages fits the budgets: "
        "stage 2 needs 2.00 MB more than its 4.00 MB budget (best split [1, 1, 4])"
    )


def test_split_rejects_bad_arguments():
    with pytest.raises(PlanError, match="stages=5 exceeds the 3 layers; use 1..3"):
        split(3, 5, lambda s, e, p: 0.0, item="layer", part="stage")
    with pytest.raises(PlanError, match=r"cost\(0, 1, 0\) returned nan"):
        split(2, 2, lambda s, e, p: math.nan)
    with pytest.raises(PlanError, match=r"limit\(0\) returned nan"):
        split(2, 2, lambda s, e, p: 1.0, limit=lambda p: math.nan)
