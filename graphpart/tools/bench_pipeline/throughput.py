"""(b) Steps per second of a K=2 pipeline on each Ray engine and of one process, with CPU time."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graphpart.engines import DataParallel, Engine, Rss, by_process, critical_path
from graphpart.ir import mlp
from graphpart.optim import make_optimizer
from graphpart.params import Init
from graphpart.plan import schedule as sch
from graphpart.plan.batching import microbatch_rows
from graphpart.plan.partition import partition
from graphpart.tools.bench_pipeline.rates import stage_matmuls
from graphpart.tools.bench_pipeline.simulator import call_overhead_s, predict_step
from graphpart.tools.machine import machine_busy_s, thread_limits, time_calls

TARGET_RATIO = 0.9  # measured throughput at least 90% of what the simulator predicts


def _problem(sizes: Sequence[int], batch: int, dtype: str, seed: int = 0) -> tuple:
    """The bench's model, its parameters (an Init: each worker draws its own stage's, as
    training does, so none travels through Ray's object store, whose shared pages a worker
    would map after its baseline: 7 MiB on stage 0 of the default model), a minibatch and
    Adam."""
    g = mlp(list(sizes), activation="relu", bias=True, loss="cross_entropy")
    params = Init(seed, dtype)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch)
    opt = make_optimizer("adam", lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8)
    return g, params, X, y, opt


RAY_TRANSPORTS = ("push", "shm")  # the ones measured, named as --transport names them


def _actor_cpu_s(engine: Any) -> list[float]:
    """CPU seconds used so far by each stage actor's process (all its threads)."""
    t = engine.transport
    actors = getattr(t, "actors", [])
    return t.get([a.__ray_call__.remote(lambda self: time.process_time()) for a in actors])


def microbatch_times(
    busy: Sequence[dict[str, float]], per: int
) -> tuple[list[float], list[float], list[float] | None, list[float] | None]:
    """Per stage, the seconds of one micro-batch's forward and backward over `per` of them
    (busy seconds by kind, as `_time_steps` gives them), and a split backward's I and W
    measured apart (None, None where every backward ran whole: no W time)."""
    fwd = [b["F"] / per for b in busy]
    bwd = [b["B"] / per for b in busy]
    wgt = [b["W"] / per for b in busy]
    if not any(w > 0 for w in wgt):
        return fwd, bwd, None, None
    return fwd, bwd, [b - w for b, w in zip(bwd, wgt, strict=True)], wgt


def idle_share(busy: Sequence[dict[str, float]], wall_s: float) -> float:
    """The stages' mean idle share of `wall_s` seconds of steps (busy seconds by kind, as
    `_time_steps` gives them): blocked on a neighbour's tensor (`wait`), or with no step call
    running (`wall_s - span`). What is left of a step is work: the actions', `finish`'s, and
    each call's own cost (sends, dispatch), which the simulator counts as work too."""
    return sum(b["wait"] + max(0.0, wall_s - b["span"]) for b in busy) / (len(busy) * wall_s)


def _time_steps(engine: Any, X: np.ndarray, y: np.ndarray, warmup: int, steps: int) -> dict:
    """Median/mean step time of `steps` steps after `warmup`; stage busy time, and CPU time of
    the driver and of each stage process, over the timed window."""
    for _ in range(warmup):
        engine.step(X, y)
    before = engine.stats() if hasattr(engine, "stats") else None
    cpu0, drv0, load0 = _actor_cpu_s(engine), time.process_time(), os.getloadavg()[0]
    mach0, wall0 = machine_busy_s(), time.perf_counter()
    times = time_calls(lambda _: engine.step(X, y), steps)
    drv, cpu1 = time.process_time() - drv0, _actor_cpu_s(engine)
    mach1, wall = machine_busy_s(), time.perf_counter() - wall0
    out = {
        "step_s_median": statistics.median(times),
        "step_s_mean": statistics.fmean(times),
        "step_s_min": min(times),
        "steps": steps,
        "load_avg_1m": [load0, os.getloadavg()[0]],
        "driver_cpu_ms_per_step": drv / steps * 1e3,
        "stage_cpu_ms_per_step": [(b - a) / steps * 1e3 for a, b in zip(cpu0, cpu1, strict=True)],
    }
    out["samples_per_s"] = len(X) / out["step_s_median"]
    if mach0 is not None and mach1 is not None:  # cores busy with other people's work
        ours = drv + sum(b - a for a, b in zip(cpu0, cpu1, strict=True))
        out["other_cpu_cores"] = max(0.0, (mach1 - mach0 - ours) / wall)
        out["idle_share"] = max(0.0, 1.0 - (mach1 - mach0) / (wall * (os.cpu_count() or 1)))
    if before is not None:
        after = engine.stats()
        # each worker process's resident peak over its baseline (the OS's high-water mark),
        # so far: a stage's, a replica's, or a device's with its virtual stages
        out["resident_growth"] = [
            Rss.of_process([a.rss for a in held]).growth for held in by_process(after).values()
        ]
        out["busy_s"] = [
            {
                "F": a.busy.forward - b.busy.forward,
                "B": a.busy.backward - b.busy.backward,
                "W": a.busy.weight - b.busy.weight,  # of B: the split backward's W calls
                "step": a.busy.finish - b.busy.finish,
                "cpu": a.busy.compute_cpu - b.busy.compute_cpu,  # OS CPU time of F and B
                "allreduce": a.busy.allreduce - b.busy.allreduce,  # data parallelism's
                "exposed": a.busy.exposed - b.busy.exposed,  # of it, after the backward
                "polled": a.busy.polled - b.busy.polled,  # its work inside the backward
                "wait": a.busy.wait - b.busy.wait,  # blocked on a neighbour's tensor
                "wait_cpu": a.busy.wait_cpu - b.busy.wait_cpu,  # of it, polling: CPU time
                "span": a.busy.span - b.busy.span,  # inside the stage's step calls
            }
            for a, b in zip(after, before, strict=True)
        ]
        # data parallelism: each worker's all-reduce of every timed step (workers/stats.py)
        timed = [a.busy.reductions - b.busy.reductions for a, b in zip(after, before, strict=True)]
        if any(n > len(a.reduce_marks) for a, n in zip(after, timed, strict=True)):
            raise ValueError(
                f"timed {max(timed)} all-reduces, more than a worker keeps the marks of"
            )
        if any(timed):
            out["reduce_marks"] = [
                a.reduce_marks[len(a.reduce_marks) - n :] for a, n in zip(after, timed, strict=True)
            ]
    return out


def simulated(
    timed: dict[str, Any], kind: str, m: int, stages: int, comm_s: float
) -> dict[str, Any]:
    """A K-stage row's figures from its timed steps (`_time_steps`'s): the stage times per
    micro-batch (ms), the simulator's step fed them (the work alone, and with each stage's
    per-call cost), its bubble, and the measured one (wall clocks: the stages' idle share of
    the timed steps, blocked on a neighbour's tensor or outside the step call)."""
    steps = timed["steps"]
    fwd, bwd, igr, wgt = microbatch_times(timed["busy_s"], steps * m)
    fin = [b["step"] / steps for b in timed["busy_s"]]
    pred = predict_step(kind, m, fwd, bwd, fin, comm_s, igr, wgt)
    over = call_overhead_s(timed, kind, stages, m)

    def plus(xs: Sequence[float] | None) -> list[float] | None:
        return None if xs is None else [x + o for x, o in zip(xs, over, strict=True)]

    cal = predict_step(kind, m, plus(fwd), plus(bwd), plus(fin), comm_s, plus(igr), plus(wgt))
    split = (
        {}
        if igr is None or wgt is None
        else {  # a split backward's I and W apart
            "igrad_ms": [v * 1e3 for v in igr],
            "wgrad_ms": [v * 1e3 for v in wgt],
        }
    )
    return {
        "fwd_ms": [v * 1e3 for v in fwd],
        "bwd_ms": [v * 1e3 for v in bwd],
        **split,
        "finish_ms": [v * 1e3 for v in fin],
        "call_overhead_ms": [v * 1e3 for v in over],
        "predicted_kernels_step_s": pred["step_s"],
        "predicted_step_s": cal["step_s"],
        "predicted_bubble": cal["bubble"],
        "measured_bubble": idle_share(timed["busy_s"], steps * timed["step_s_mean"]),
    }


def measure_pipeline(
    sizes: Sequence[int],
    batch: int,
    dtype: str,
    microbatches: Sequence[int],
    schedules: Sequence[str],
    warmup: int,
    steps: int,
    comm_s: dict[str, float],
    stages: int = 2,
    transports: Sequence[str] = RAY_TRANSPORTS,
    after: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """A K-stage pipeline on each Ray transport, each (schedule, M) measured and compared
    with the simulator fed the stage times measured in the same window: the work inside each
    call alone ('kernels'), and that plus each stage's per-call cost. `after(row)` runs right
    after each configuration, its workers gone (the driver times its peer and rates there)."""
    g, params, X, y, opt = _problem(sizes, batch, dtype)
    plan = partition(g, stages, "balanced")
    rows = []
    for name in transports:
        for kind in (k for k in schedules if k in sch.KINDS):  # virtual: virtual_rows
            for m in microbatches:
                # a fresh engine a configuration: its workers' memory is this schedule's alone
                with Engine(
                    plan, params, opt, transport=name, max_rows=batch, keep_events=False,
                    schedule=kind, microbatches=m,
                ) as eng:  # fmt: skip
                    r = _time_steps(eng, X, y, warmup, steps)
                    sim = simulated(r, kind, m, stages, comm_s[name])
                    row = {
                        "engine": name,
                        "stages": stages,
                        "schedule": kind,
                        "microbatches": m,
                        "stage_split": plan.sizes(),
                        **r,
                        **sim,
                        # the OS's CPU time of the same calls (thread clock), per micro-batch
                        "compute_cpu_ms": [b["cpu"] / (steps * m) * 1e3 for b in r["busy_s"]],
                        "comm_ms": comm_s[name] * 1e3,
                        # the share not inside an action's work (idle + each call's own cost)
                        "not_computing": max(
                            0.0,
                            1.0
                            - sum(b["F"] + b["B"] + b["step"] for b in r["busy_s"])
                            / (stages * steps * r["step_s_mean"]),
                        ),
                        "kernels_ratio": sim["predicted_kernels_step_s"] / r["step_s_median"],
                        "throughput_ratio": sim["predicted_step_s"] / r["step_s_median"],
                    }
                    row["target_met"] = row["throughput_ratio"] >= TARGET_RATIO
                    rows.append(row)
                if after is not None:
                    after(row)
    return rows


def measure_single(
    sizes: Sequence[int], batch: int, dtype: str, warmup: int, steps: int
) -> list[dict[str, Any]]:
    """The same model in this process, one stage: BLAS on every core, and on one thread."""
    g, params, X, y, opt = _problem(sizes, batch, dtype)
    out = []
    for threads in (os.cpu_count() or 1, 1):
        with thread_limits(threads):
            eng = Engine(partition(g, 1), params, opt, max_rows=batch, keep_events=False)
            r = _time_steps(eng, X, y, warmup, steps)
            r.pop("busy_s", None)
            r.pop("resident_growth", None)  # in process: this process holds the bench too
            r["stage_cpu_ms_per_step"] = [r["driver_cpu_ms_per_step"]]
            r["sgemm_gflops"] = whole_model_rate(sizes, batch, dtype)
            out.append({"engine": "local", "threads": threads, **r})
    return out


def measure_data_parallel(
    sizes: Sequence[int],
    batch: int,
    dtype: str,
    replicas: int,
    warmup: int,
    steps: int,
    off_first: bool = False,
) -> dict[str, Any]:
    """`replicas` whole-model replicas on Ray, each on batch/replicas rows, gradients
    ring-all-reduced over shared-memory channels every step (graphpart's data parallelism),
    with the all-reduce overlapping the backward (the default) and, on the same workers,
    after it (`overlap_off`; timed first where `off_first`, so that a pair of calls takes
    the two in both orders): the communication the step carried on its critical path with
    the overlap against without it (`comm_of_unhidden`), and of it the part after the last
    backward (`exposed_of_unhidden`)."""
    g, params, X, y, opt = _problem(sizes, batch, dtype)
    with DataParallel(partition(g, 1), params, opt, replicas=replicas, max_rows=batch) as eng:
        timed = {}
        for overlap in (False, True) if off_first else (True, False):
            eng.set_overlap(overlap)
            timed[overlap] = _allreduce_figures(_time_steps(eng, X, y, warmup, steps), steps)
    r, off = timed[True], timed[False]
    r["overlap_off"] = {k: off[k] for k in ALLREDUCE_FIGURES}
    r["exposed_of_unhidden"] = r["critical_exposed_ms"] / max(off["critical_exposed_ms"], 1e-9)
    r["comm_of_unhidden"] = r["critical_comm_ms"] / max(off["critical_comm_ms"], 1e-9)
    r["sgemm_gflops"] = whole_model_rate(sizes, microbatch_rows(batch, replicas), dtype)
    return {"engine": "data-parallel", "replicas": replicas, **r}


ALLREDUCE_FIGURES = (
    "step_s_median",
    "allreduce_ms",
    "exposed_ms",
    "polled_ms",
    "critical_exposed_ms",
    "critical_own_ms",
    "critical_comm_ms",
    "replica_wait_ms",
)


def _allreduce_figures(r: dict[str, Any], steps: int) -> dict[str, Any]:
    """A data-parallel run's timed steps (`_time_steps`) with its all-reduce's figures a step:
    each replica's own time, the part it waited for after its backward, its work inside the
    backward; and, the replicas' clocks side by side, the communication after the last
    replica's backward, that and its work inside the backward (which delayed the backward's
    end: on a core a replica the copies and sums take the core wherever they run), that
    replica's own time, and the others' wait for it."""
    busy = r.pop("busy_s")
    r["allreduce_ms"] = [b["allreduce"] / steps * 1e3 for b in busy]
    r["exposed_ms"] = [b["exposed"] / steps * 1e3 for b in busy]
    r["polled_ms"] = [b["polled"] / steps * 1e3 for b in busy]
    crit = critical_path(r.pop("reduce_marks"))
    r["critical_exposed_ms"] = crit.exposed / crit.steps * 1e3
    r["critical_own_ms"] = crit.own / crit.steps * 1e3
    # what the step carried: after the last backward, and inside it (its calls' work)
    r["critical_comm_ms"] = (crit.exposed + crit.polled) / crit.steps * 1e3
    r["replica_wait_ms"] = crit.wait / crit.steps * 1e3
    return r


def whole_model_rate(sizes: Sequence[int], rows: int, dtype: str) -> float:
    """The one-thread sgemm rate (GFLOP/s) of the whole model's products at `rows` rows,
    measured now: what a one-process or replica row is judged against."""
    return stage_matmuls(sizes, [len(sizes) - 1], rows, dtype)[0].gflops
