"""Timing GPU work from the host: synchronise, then read the clock; medians of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def time_calls(
    fn: Callable[[], Any], sync: Callable[[], Any], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median, best and mean seconds of `fn()` followed by `sync()` (the device finished),
    over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return {
        "median_s": statistics.median(times),
        "best_s": min(times),
        "mean_s": statistics.fmean(times),
        "repeats": len(times),
    }


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den, or None when either is missing or den is 0."""
    if num is None or den is None or den == 0:
        return None
    return num / den
