"""What measuring costs: events on vs off (A/B), per-event and RSS-sampling cost estimates."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphpart.engines import Ledger
from graphpart.params import Init
from graphpart.run.setup import make_engine
from graphpart.tools.profile.measure import Measurement, measure
from graphpart.tools.profile.sample import RssSampler


def _typical(step_s: Sequence[float]) -> float:
    """Median step time, leaving out the first step (it allocates the lazy buffers)."""
    rest = list(step_s[1:]) or list(step_s)
    return statistics.median(rest)


def ledger_mark_cost(n: int = 20000) -> float:
    """Seconds one recorded ledger event costs over an unrecorded one (this process)."""

    def per_call(keep: bool) -> float:
        led = Ledger(keep_events=keep)
        t = time.perf_counter()
        for _ in range(n):
            led.mark("F", "0")
        return (time.perf_counter() - t) / n

    return max(0.0, min(per_call(True) for _ in range(3)) - min(per_call(False) for _ in range(3)))


def _ab_local(s: Any, batches: list[np.ndarray], rounds: int) -> tuple[float, float]:
    """Median step time of two in-process engines, events on and off, stepped alternately."""
    params = Init(s.config.train.seed, s.config.train.dtype)
    engines = [make_engine(s, params, keep_events=True), make_engine(s, params, keep_events=False)]
    times: list[list[float]] = [[], []]
    data = [(s.dataset.X_train[idx], s.dataset.y_train[idx]) for idx in batches]
    for e in engines:  # allocate the lazy buffers before timing
        e.step(*data[0])
    for r in range(rounds):
        x, y = data[r % len(data)]
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            t = time.perf_counter()
            engines[which].step(x, y)
            times[which].append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def overhead(s: Any, m: Measurement, batches: list[np.ndarray]) -> dict[str, Any]:
    """Measurement overhead: events on vs off (A/B), and estimates from per-call costs.

    In-process runs step an events-on and an events-off engine alternately (at least 10
    steps each); Ray runs repeat the steps on fresh actors with events off. The estimates:
    (events recorded per step on the busiest stage) x (cost of one recorded event), and the
    RSS sampler's duty cycle (one sample's cost / sampling interval), each as a fraction of a
    step; the A/B difference is noisy for steps of a few milliseconds.
    """
    if m.runtime == "local":
        on_s, off_s = _ab_local(s, batches, max(10, len(batches)))
    else:
        off = measure(s, len(batches), keep_events=False, sample_rss=False, batches=batches)
        on_s, off_s = _typical(m.step_s), _typical(off.step_s)
    per_event = ledger_mark_cost()
    steps_after_first = max(1, len(batches) - 1)
    per_step = []
    for ev in m.events:
        first = next((i for i, e in enumerate(ev) if e[1] == "step"), len(ev))
        rest = ev[first + 1 :] if len(batches) > 1 else ev
        per_step.append(len(rest) / steps_after_first)
    events_per_step = int(round(max(per_step, default=0)))
    sampler = RssSampler([os.getpid()])
    t = time.perf_counter()
    for _ in range(200):
        sampler.sample()
    sample_cost = (time.perf_counter() - t) / 200
    return {
        "step_s_on": on_s,
        "step_s_off": off_s,
        "ab_fraction": (on_s - off_s) / off_s if off_s > 0 else 0.0,
        "events_per_step": events_per_step,
        "event_cost_s": per_event,
        "estimate_fraction": events_per_step * per_event / on_s if on_s > 0 else 0.0,
        "rss_sample_s": sample_cost,
        "rss_interval_s": sampler.interval,
        "rss_duty_fraction": sample_cost / sampler.interval,
    }
