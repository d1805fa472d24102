"""(c) What the schedule simulator predicts from measured stage times, and each call's own cost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graphpart.plan import schedule as sch
from graphpart.plan.balance import balance


def predict_step(
    kind: str,
    microbatches: int,
    fwd: Sequence[float],
    bwd: Sequence[float],
    finish: Sequence[float],
    comm: float,
    igrad: Sequence[float] | None = None,
    wgrad: Sequence[float] | None = None,
) -> dict[str, float]:
    """Step time the simulator predicts from per-micro-batch stage times (+ each stage's
    finish after its last action; a split backward's I and W as given, else half of B each),
    and its bubble fraction."""
    schedule = sch.make(kind, len(fwd), microbatches)
    tl = sch.simulate(schedule, list(fwd), list(bwd), comm, igrad, wgrad)
    ends = [max(e.end for e in tl.events if e.stage == k) for k in range(len(fwd))]
    return {
        "step_s": max(e + f for e, f in zip(ends, finish, strict=True)),
        "makespan_s": tl.makespan,
        "bubble": tl.bubble,
    }


def call_overhead_s(
    timed: dict[str, Any], kind: str, stages: int, microbatches: int
) -> list[float]:
    """Per stage, the CPU seconds its process spends per call outside the stage's own work.

    Each stage runs its schedule's actions and `finish` a step (2M + 1 with whole backwards,
    3M + 1 with split ones): on push and shm one call a step, plus the tensors it sends and
    receives. Its CPU time per step (all threads: Ray's argument fetch, result store, the
    sends and receives) less its busy time (the work inside the actions) and less the CPU
    time it spent polling for a neighbour's tensor before sleeping (`wait_cpu`: idleness that
    burns CPU; a stage that waited at every action polled up to 5 ms each time, which counted
    as work put the simulator's bubble 10-15 points under the measured one), spread over
    those actions, is what each action costs on top of the work.
    """
    calls = [len(acts) + 1 for acts in sch.make(kind, stages, microbatches)]
    steps = timed["steps"]
    return [
        max(0.0, cpu_ms / 1e3 - (b["F"] + b["B"] + b["step"] + b.get("wait_cpu", 0.0)) / steps) / n
        for cpu_ms, b, n in zip(timed["stage_cpu_ms_per_step"], timed["busy_s"], calls, strict=True)
    ]


def project(
    layer_s: Sequence[float],
    fwd_share: Sequence[float],
    hop_s: float,
    batch: int,
    microbatches: int,
    stage_counts: Sequence[int],
) -> list[dict[str, float]]:
    """What a machine with a core per stage would do: the simulator fed per-layer times measured
    on one core (`layer_s`: forward + backward of one micro-batch, `fwd_share` the forward's
    part) and the measured hop, for each stage count (balanced split, 1F1B, M micro-batches).
    It assumes what the measurement cannot show on a small machine: no core is shared, and
    a stage's BLAS uses one thread (more threads per stage would shorten every stage alike)."""
    out = []
    for k in stage_counts:
        if k > len(layer_s):
            continue
        sizes = balance(list(layer_s), k)
        fwd, bwd, start = [], [], 0
        for n in sizes:
            part = range(start, start + n)
            fwd.append(sum(layer_s[i] * fwd_share[i] for i in part))
            bwd.append(sum(layer_s[i] * (1 - fwd_share[i]) for i in part))
            start += n
        pred = predict_step("1f1b", microbatches, fwd, bwd, [0.0] * k, hop_s)
        out.append(
            {
                "stages": k,
                "split": sizes,
                "step_s": pred["step_s"],
                "samples_per_s": batch / pred["step_s"],
                "bubble": pred["bubble"],
            }
        )
    return out
