"""Steps per second of the schedules with virtual stages (interleaved 1F1B, ZB-V): K devices of
`chunks` stages each, measured on a Ray transport and set against the virtual-stage simulator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from graphpart.engines import Engine
from graphpart.plan.kinds import chunks_for, is_virtual
from graphpart.plan.partition import partition
from graphpart.plan.virtual_schedules import pipeline_step
from graphpart.tools.bench_pipeline.throughput import (
    TARGET_RATIO,
    _problem,
    _time_steps,
    idle_share,
    microbatch_times,
)


def measure_virtual(
    sizes: Sequence[int],
    batch: int,
    dtype: str,
    kinds: Sequence[str],
    microbatches: Sequence[int],
    warmup: int,
    steps: int,
    comm_s: float,
    devices: int = 2,
    transport: str = "shm",
    after: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Each virtual schedule of `kinds` (others are skipped) at each M on `devices` devices,
    the model cut into devices x chunks virtual stages ("balanced"). A row has the pipeline
    rows' fields: per virtual stage, forward and backward ms per micro-batch (`fwd_ms`,
    `bwd_ms`, in virtual-stage order, as `stage_split`); per device, the measured bubble (its
    idle share, `idle_share`) and the share it was not inside an action's work; and the
    simulator's step fed those times and the hop
    (`predicted_step_s`: the work inside the calls only, no per-call cost: none is
    calibrated for a device holding several stages). `after(row)` as measure_pipeline's."""
    g, params, X, y, opt = _problem(sizes, batch, dtype)
    rows = []
    for kind in (k for k in kinds if is_virtual(k)):
        v = chunks_for(kind)
        plan = partition(g, devices * v, "balanced")
        for m in microbatches:  # a fresh engine a configuration, as measure_pipeline
            with Engine(
                plan, params, opt, transport=transport, max_rows=batch, keep_events=False,
                schedule=kind, chunks=v, microbatches=m,
            ) as eng:  # fmt: skip
                owner = eng.placement.owner
                r = _time_steps(eng, X, y, warmup, steps)  # resident growth: a device's
                per = steps * m
                fwd, bwd, igr, wgt = microbatch_times(r["busy_s"], per)
                fin = [0.0] * devices
                busy = [0.0] * devices
                clocks = [{"wait": 0.0, "span": 0.0} for _ in range(devices)]  # per device
                for s, b in enumerate(r["busy_s"]):
                    fin[owner[s]] += b["step"] / steps
                    busy[owner[s]] += b["F"] + b["B"] + b["step"]
                    for k in clocks[owner[s]]:  # a device's step call: on its first chunk
                        clocks[owner[s]][k] += b[k]
                pred, tl = pipeline_step(kind, v, m, fwd, bwd, fin, comm_s, igr, wgt)
                row = {
                    "engine": transport,
                    "stages": devices,
                    "chunks": v,
                    "schedule": kind,
                    "microbatches": m,
                    "stage_split": plan.sizes(),
                    **r,
                    "fwd_ms": [t * 1e3 for t in fwd],
                    "bwd_ms": [t * 1e3 for t in bwd],
                    "compute_cpu_ms": [b["cpu"] / per * 1e3 for b in r["busy_s"]],
                    "finish_ms": [t * 1e3 for t in fin],
                    "comm_ms": comm_s * 1e3,
                    "call_overhead_ms": [0.0] * devices,
                    "predicted_kernels_step_s": pred,
                    "predicted_step_s": pred,
                    "predicted_bubble": tl.bubble,
                    "measured_bubble": idle_share(clocks, steps * r["step_s_mean"]),
                    "not_computing": max(
                        0.0, 1.0 - sum(busy) / (devices * steps * r["step_s_mean"])
                    ),
                    "kernels_ratio": pred / r["step_s_median"],
                    "throughput_ratio": pred / r["step_s_median"],
                }
                row["target_met"] = row["throughput_ratio"] >= TARGET_RATIO
                rows.append(row)
            if after is not None:
                after(row)
    return rows
