"""(c) What the schedule simulator predicts from measured stage times, and each call's own cost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graphpart.plan import schedule as sch


def predict_step(
    kind: str,
    microbatches: int,
    fwd: Sequence[float],
    bwd: Sequence[float],
    finish: Sequence[float],
    comm: float,
) -> dict[str, float]:
    """Step time the simulator predicts from per-micro-batch stage times (+ each stage's
    finish after its last action), and its bubble fraction."""
    tl = sch.simulate(sch.make(kind, len(fwd), microbatches), list(fwd), list(bwd), comm)
    ends = [max(e.end for e in tl.events if e.stage == k) for k in range(len(fwd))]
    return {
        "step_s": max(e + f for e, f in zip(ends, finish, strict=True)),
        "makespan_s": tl.makespan,
        "bubble": tl.bubble,
    }


def call_overhead_s(timed: dict[str, Any], microbatches: int) -> list[float]:
    """Per stage, the CPU seconds its process spends per call outside the stage's own work.

    Each stage runs 2M + 1 actions a step (M forwards, M backwards, finish), each its own call
    on the tasks transport (on push one call, plus the tensors it sends and receives). Its CPU
    time per step (all threads: Ray's argument fetch, result store, task bookkeeping) less its
    busy time (the work inside the calls), spread over those calls, is what each call costs on
    top of the work. Valid where a stage waiting for input sleeps (ray, push); not for
    a compiled graph, whose waiting actors spin and so burn CPU for the whole step.
    """
    calls = 2 * microbatches + 1
    steps = timed["steps"]
    return [
        max(0.0, cpu_ms / 1e3 - (b["F"] + b["B"] + b["step"]) / steps) / calls
        for cpu_ms, b in zip(timed["stage_cpu_ms_per_step"], timed["busy_s"], strict=True)
    ]
