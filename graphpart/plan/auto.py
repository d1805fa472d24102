"""Search training setups (one device, accumulation, pipelines, data parallel): memory, speed."""

# What `search` predicts, and what it assumes
# -------------------------------------------
# Memory is the analytic model (graphpart.plan.memory: predict, predict_data_parallel), exact
# buffer by buffer against the workers' ledgers. Time is a model, not a measurement:
#
# - one device per pipeline stage or data-parallel replica, all alike; on a machine of C cores
#   where each device uses T of them (`search`'s cores and threads), K devices share the cores
#   when K T > C: the busy ones compute at min(1, C / (T x busy)) of the measured rate
#   (graphpart.plan.timing, the model compare's projection uses too); memory bandwidth and
#   the link are not shared;
# - compute runs at `Rates.flops_per_s`: an action's time is its FLOPs (graphpart.plan.stages:
#   Stage.flops_fwd / flops_bwd per sample, times its rows) over that rate, plus a fixed
#   `Rates.action_s` per forward or backward action (dispatch, kernel launches); recompute adds
#   one forward to every backward. Where the rates carry `layers` (plan --auto measures them:
#   each layer's F, I and W run by a stage worker at several micro-batch sizes), an action's
#   time is its layers' measured seconds at its rows instead (the kernels' real speed at those
#   shapes: operands out of cache, elementwise work, the first layer's missing I), averaged
#   over the step's M micro-batches (the first meets its weights where the update left them,
#   the later ones where the previous micro-batch did: `LayerTimes.warm`), and an update's
#   the layers' measured update;
# - a transfer costs `hop_s + bytes / copy_bytes_per_s` (linear; where the rates measured a
#   ring message's latency between busy processes, that latency plus two copies:
#   `Rates.transfer_s`), and a pipeline's hops all take the time of its widest boundary (the
#   simulator takes one delay for every hop);
# - the optimizer update streams its buffers once: (3 + 2 x state slots) x parameter bytes
#   (read weight and gradient, write weight; read and write each state slot) over
#   `copy_bytes_per_s`; each device updates its own parameters when its last backward ends;
# - data parallel: every replica runs ceil(B / K) rows as M micro-batches (gradient
#   accumulation in the replica: 2 M actions), then a ring all-reduce of the gradients,
#   2 (K - 1) messages of P / K bytes, each one hop, with the adds and copies of
#   workers/ring.py (Rates.ring_s: 4.5 copies of a chunk per ring step, or the copies a byte
#   plan --auto measured in a round of the buckets a replica cuts its gradients in, their
#   own latencies included). The search tries each M of
#   `microbatch_choices` up to a replica's rows floor(B / K);
# - a setup on more than one device also pays, once a step, the driver's call to its workers
#   and their replies (`Rates.call_s`: plan --auto times Ray's actor calls to as many workers
#   at once); one device runs in process and makes none;
# - a one-device setup runs in process on every core's BLAS threads (as `graphpart train` on
#   one device does): where plan --auto measured rates that way (`Rates.whole`), it is timed
#   at them, not at one device's share of the cores;
# - a setup on n devices is timed at the rates measured with n devices busy at once
#   (`Rates.busy`, where plan --auto measured them): each device's caches and memory bus are
#   shared with the others', and each time is the slowest device's (a step waits for it).
#
# Deliberate departures from the obvious:
# - A one-stage run (single device, or accumulation over M micro-batches) is simulated as a
#   one-stage pipeline, so all three kinds share one timing path. Only the 1F1B order is
#   enumerated for one stage: its time equals GPipe's and it keeps one micro-batch of
#   activations instead of M.
# - Compute time uses the mean micro-batch, B / M rows (the FLOPs of the whole minibatch are
#   the same however it is split); memory uses the largest, ceil(B / M) rows, which is what
#   the buffers hold. Data parallel uses ceil(B / K): the step waits for the largest replica.
# - The fixed cost per action (`Rates.action_s`) is what makes accumulation slower than one
#   device at equal FLOPs; it defaults to a ring message's measured latency where the
#   devices' rates carry one (`Rates.per_action_s`: an action's own cost in a run, its
#   receive and send, is that order, 0.03-0.06 ms here), else to `hop_s` (a thread's start
#   and wake included: 0.2-0.7 ms here, which predicted pipelines of many micro-batches
#   too slow: docs/compare.md). A one-stage setup (one device, accumulation, a data-parallel
#   replica) with measured layer times pays none: its actions are calls in the worker's
#   own process, with no message between them, and the layer times were measured through
#   the same calls (hop_s there predicted a small model's step 6x too slow).
# - Data-parallel candidates do not recompute (the data-parallel engine has no such option).

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from graphpart.errors import PlanError
from graphpart.ir.graph import Graph
from graphpart.plan import schedule as sch
from graphpart.plan import timing
from graphpart.plan.candidates import KINDS, TIE, Candidate, Rates, rank, table, to_dict
from graphpart.plan.kinds import chunks_for
from graphpart.plan.kinds import make as make_schedule
from graphpart.plan.memory import (
    MemoryPrediction,
    Workload,
    budget_problem,
    param_bytes,
    predict,
    predict_data_parallel,
)
from graphpart.plan.partition import partition
from graphpart.plan.stages import Plan, Stage
from graphpart.plan.virtual_memory import predict_virtual
from graphpart.plan.virtual_schedules import pipeline_step as virtual_step

__all__ = ["KINDS", "TIE", "Candidate", "Rates", "rank", "search", "step_time", "table", "to_dict"]


# -- time --------------------------------------------------------------------------------------
def _update_s(nbytes: int, slots: int, rates: Rates) -> float:
    return (3 + 2 * slots) * nbytes / rates.copy_bytes_per_s


def _finish_s(st: Stage, w: Workload, rates: Rates) -> float:
    """A stage's update once a step: its layers' measured updates, or its buffers streamed."""
    if rates.layers is not None:
        return rates.layers.update_s(st.layers)
    return _update_s(param_bytes(st.graph, w.dtype), w.slots, rates)


def step_time(
    plan: Plan, w: Workload, *, rates: Rates, capacity: float | None = None
) -> tuple[float, sch.Timeline]:
    """Predicted seconds of one training step of `plan` (any K, 1 included) on workload `w`
    and the simulator's timeline: each stage's per-micro-batch forward and backward seconds
    and its optimizer update (`w.slots` state buffers per parameter) after its last action, through
    graphpart.plan.timing.pipeline_step (the model compare's projection uses), on a machine
    that runs `capacity` devices at full speed at once (None: a core per device).
    """
    fwd, bwd, igrad, wgrad, comm = _stage_times(plan, w, rates)
    finish = [_finish_s(st, w, rates) for st in plan.stages]
    return timing.pipeline_step(
        w.schedule, w.microbatches, fwd, bwd, finish, comm, capacity, igrad, wgrad
    )


def _stage_times(
    plan: Plan, w: Workload, rates: Rates
) -> tuple[list[float], list[float], list[float], list[float], float]:
    """Each stage's seconds a micro-batch (forward, backward, and the backward's I and W
    apart) and a hop between stages, for `step_time` and `_virtual_time`."""
    rows, dtype = w.batch / w.microbatches, w.dtype
    act = rates.per_action_s
    if plan.k == 1 and rates.layers is not None and rates.action_s is None:
        act = 0.0  # calls in the worker's own process: the measured layer times hold them
    if rates.layers is not None:  # measured: each action's layers at these rows
        lt = rates.layers
        m = w.microbatches  # a step's first micro-batch and its later ones (LayerTimes.warm)
        f0, i0, w0 = ([lt.action_s(k, st.layers, rows, m) for st in plan.stages] for k in "FIW")
    else:  # FLOPs over the matmul rate; W the weight gradients' FLOPs, I the rest
        rate = rates.flops_at(rows)
        f0 = [st.flops_fwd * rows / rate for st in plan.stages]
        w0 = [st.flops_wgrad * rows / rate for st in plan.stages]
        i0 = [(st.flops_bwd - st.flops_wgrad) * rows / rate for st in plan.stages]
    fwd = [f + act for f in f0]
    redo = f0 if w.recompute else [0.0] * plan.k  # a recomputed forward, in I or B
    bwd = [i + wg + act + r for i, wg, r in zip(i0, w0, redo, strict=True)]
    wgrad = [wg + act for wg in w0]  # a split backward: W, and I with the recomputation
    igrad = [i + act + r for i, r in zip(i0, redo, strict=True)]
    itemsize = np.dtype(dtype).itemsize
    width = max((st.output_width for st in plan.stages), default=0)
    comm = rates.transfer_s(rows * width * itemsize) if plan.k > 1 else 0.0
    return fwd, bwd, igrad, wgrad, comm


def _virtual_time(
    plan: Plan, devices: int, w: Workload, rates: Rates, capacity: float | None = None
) -> tuple[float, sch.Timeline]:
    """Predicted seconds of one step of `plan`'s V stages on `devices` devices as w.schedule
    places them (interleaved, zbv: graphpart.plan.virtual_schedules.pipeline_step), each
    virtual stage timed as `step_time` times a stage, each device's update after its last
    action; where the devices outnumber `capacity`, the step is stretched by devices /
    capacity (the virtual-stage simulator does not share cores itself)."""
    fwd, bwd, igrad, wgrad, comm = _stage_times(plan, w, rates)
    v = chunks_for(w.schedule, w.chunks)
    where, _ = make_schedule(w.schedule, devices, v, 1)
    finish = [0.0] * devices
    for s, st in enumerate(plan.stages):
        finish[where.owner[s]] += _finish_s(st, w, rates)
    step, tl = virtual_step(w.schedule, v, w.microbatches, fwd, bwd, finish, comm, igrad, wgrad)
    return step / timing.share(devices, capacity), tl


def _grid_time(
    plan: Plan, replicas: int, w: Workload, rates: Rates, capacity: float | None = None
) -> tuple[float, sch.Timeline]:
    """Predicted seconds of one step of R replicas of a K-stage pipeline: each replica's
    pipeline on its ceil(B / R) rows (`step_time`; the R pipelines at once share the
    machine's capacity, R x K devices), plus the slowest stage's ring all-reduce of its own
    parameters, 2 (R - 1) messages of 1/R of them."""
    share = -(-w.batch // replicas)
    wr = replace(w, batch=share, microbatches=min(w.microbatches, share))
    cap = None if capacity is None else capacity / replicas
    step, tl = step_time(plan, wr, rates=rates, capacity=cap)
    ring = max(rates.ring_s(param_bytes(st.graph, w.dtype), replicas) for st in plan.stages)
    return step + ring, tl


def _data_parallel_time(
    plan: Plan, replicas: int, w: Workload, rates: Rates, capacity: float | None = None
) -> float:
    """Predicted seconds of one data-parallel step: each replica's ceil(B / K) rows in
    min(w.microbatches, its rows) micro-batches (at the mean micro-batch's rate, as
    `step_time`, and a fixed cost per action), the ring all-reduce, the update."""
    (st,) = plan.stages
    share = -(-w.batch // replicas)
    m = min(max(1, w.microbatches), share)
    wr = replace(w, batch=share, microbatches=m, recompute=False)
    (fwd,), (bwd,), *_ = _stage_times(plan, wr, rates)  # a micro-batch of share / m rows
    compute = m * (fwd + bwd)
    p = param_bytes(plan.graph, w.dtype)
    ring = rates.ring_s(p, replicas)
    return timing.replicas_step(compute, ring, _finish_s(st, w, rates), replicas, capacity)


# -- the search --------------------------------------------------------------------------------
def _positive(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
        raise PlanError(f"{name}={v!r}: must be a positive integer")
    return int(v)


def _candidate(
    kind: str,
    pred: MemoryPrediction,
    plan: Plan,
    budget: int | None,
    *,
    replicas: int,
    step_s: float,
    bubble: float,
    comm: int,
    call_s: float = 0.0,
) -> Candidate:
    """The Candidate of a setup predicted to take `step_s` a step on its devices, plus
    `call_s` (the driver's call to its workers, Rates.call_s) where it runs on more than one."""
    worst = max(pred.stages, key=lambda s: (s.total, -s.index))
    problem = None if budget is None else budget_problem(pred, budget)
    devices = {"data-parallel": replicas, "2-d": replicas * plan.k}.get(kind, plan.k)
    if devices > 1:
        step_s += call_s
    return Candidate(
        kind=kind,
        devices=devices,
        stages=plan.k,
        microbatches=pred.microbatches,  # per replica for data parallelism
        schedule="1f1b" if kind == "data-parallel" else pred.schedule,
        recompute=pred.recompute,
        replicas=replicas,
        split=tuple(plan.sizes()),
        peak_bytes=tuple(s.total for s in pred.stages),
        worst_device=worst.index,
        worst_bytes=dict(worst.bytes),
        fits=problem is None,
        problem=problem,
        step_s=step_s,
        samples_per_s=pred.batch / step_s if step_s > 0 else math.inf,
        bubble=bubble,
        comm_bytes_per_step=int(comm),
        memory=pred,
    )


def search(
    graph: Graph,
    w: Workload,
    *,
    devices: int,
    budget: int | None,
    rates: Rates,
    microbatch_choices: Sequence[int] = (1, 2, 4, 8, 16, 32),
    cores: int | None = None,
    threads: int = 1,
    tie: float = TIE,
) -> list[Candidate]:
    """Every setup of `graph` on up to `devices` devices for `w`'s minibatch, ranked (of `w`,
    the batch, optimizer and dtype count: the rest is what the search varies).

    Enumerates: one device (M = 1, recompute off/on); gradient accumulation (one device, M > 1
    from `microbatch_choices`, recompute off/on); pipelines of K = 2..min(devices, layers)
    stages split by graphpart.plan.partition's "balanced" strategy, each M in
    `microbatch_choices` (M <= batch), every schedule of graphpart.plan.schedule.KINDS,
    recompute off/on; virtual stages, K = 2..devices devices of v chunks (interleaved v = 2
    and 3, zbv v = 2) where K v <= layers, each M, recompute off/on (memory:
    graphpart.plan.virtual_memory; time: `_virtual_time`); data parallelism with K =
    2..min(devices, batch) replicas, each M of
    `microbatch_choices` up to floor(batch / K) per replica (and 1). Memory comes from
    graphpart.plan.memory and is checked against `budget` bytes per device (None: no budget);
    time from `step_time` (see the assumptions at the top of this module) on a machine of
    `cores` cores whose devices each use `threads` of them (None: a core per device), so that K
    devices on fewer cores share them. Ranked by `rank` (fitting candidates first; see there):
    ties, step times within `tie` of a group's fastest, share one rank and are ordered fewest
    devices first, then smallest peak.
    """
    devices = _positive("devices", devices)
    batch = _positive("batch", w.batch)
    if budget is not None:
        budget = _positive("budget", budget)
    choices = sorted({_positive("microbatch choice", m) for m in microbatch_choices})
    capacity = timing.capacity_of(
        None if cores is None else _positive("cores", cores), _positive("threads", threads)
    )
    dt = np.dtype(w.dtype)
    base = replace(w, dtype=dt)
    n_layers = len(graph.layers)
    out: list[Candidate] = []

    one = partition(graph, 1, "balanced")
    solo = rates.one_device  # on every core where measured so: then it shares none
    cap = None if rates.whole is not None else capacity
    for m in [1, *(m for m in choices if 1 < m <= batch)]:
        for recompute in (False, True):
            wm = replace(base, microbatches=m, schedule="1f1b", recompute=recompute)
            step, _ = step_time(one, wm, rates=solo, capacity=cap)
            kind = "single" if m == 1 else "accumulate"
            out.append(
                _candidate(
                    kind, predict(one, wm), one, budget, replicas=1, step_s=step, bubble=0.0, comm=0
                )
            )

    for k in range(2, min(devices, n_layers) + 1):
        plan = partition(graph, k, "balanced")
        comm = sum(2 * batch * st.output_width * dt.itemsize for st in plan.stages)
        for m in (m for m in choices if m <= batch):
            for kind in sch.KINDS:
                for recompute in (False, True):
                    wm = replace(base, microbatches=m, schedule=kind, recompute=recompute)
                    # on Ray's default transport: shared-memory channels
                    pred = predict(plan, wm, channels=True)
                    step, tl = step_time(plan, wm, rates=rates.busy(k), capacity=capacity)
                    out.append(
                        _candidate(
                            "pipeline",
                            pred,
                            plan,
                            budget,
                            replicas=1,
                            step_s=step,
                            bubble=tl.bubble,
                            comm=comm,
                            call_s=rates.call_s,
                        )
                    )

    # virtual stages: K devices of v chunks each (interleaved v = 2 or 3, zbv 2), V = K v
    # stages cut "balanced", at most one layer a stage
    for k in range(2, devices + 1):
        for kind, v in (("interleaved", 2), ("interleaved", 3), ("zbv", 2)):
            if k * v > n_layers:
                continue
            plan = partition(graph, k * v, "balanced")
            comm = sum(2 * batch * st.output_width * dt.itemsize for st in plan.stages[:-1])
            for m in (m for m in choices if m <= batch):
                for recompute in (False, True):
                    wm = replace(base, microbatches=m, schedule=kind, chunks=v, recompute=recompute)
                    pred = predict_virtual(plan, wm, channels=True)
                    step, tl = _virtual_time(plan, k, wm, rates.busy(k), capacity)
                    c = _candidate(
                        "pipeline", pred, plan, budget, replicas=1, step_s=step,
                        bubble=tl.bubble, comm=comm, call_s=rates.call_s,
                    )  # fmt: skip
                    out.append(replace(c, devices=k, stages=k, chunks=v))

    p = param_bytes(graph, dt)
    for k in range(2, min(devices, batch) + 1):
        for m in [1, *(m for m in choices if 1 < m <= batch // k)]:  # M per replica
            wd = replace(base, microbatches=m, schedule="1f1b", recompute=False)
            pred = predict_data_parallel(one, k, wd, channels=True)
            step = _data_parallel_time(one, k, wd, rates.busy(k), capacity)
            out.append(
                _candidate(
                    "data-parallel",
                    pred,
                    one,
                    budget,
                    replicas=k,
                    step_s=step,
                    bubble=0.0,
                    comm=round(2 * (k - 1) / k * p),
                    call_s=rates.call_s,
                )
            )

    # R replicas of a K-stage pipeline, R x K <= devices
    for r in range(2, devices // 2 + 1):
        for k in range(2, min(devices // r, n_layers) + 1):
            plan = partition(graph, k, "balanced")
            share = -(-batch // r)
            comm = sum(2 * share * st.output_width * dt.itemsize for st in plan.stages)
            comm += max(round(2 * (r - 1) / r * param_bytes(st.graph, dt)) for st in plan.stages)
            for m in (m for m in choices if m <= batch // r):
                for kind in sch.KINDS:
                    for recompute in (False, True):
                        wm = replace(base, microbatches=m, schedule=kind, recompute=recompute)
                        pred = predict_data_parallel(plan, r, wm, channels=True)
                        step, tl = _grid_time(plan, r, wm, rates.busy(r * k), capacity)
                        out.append(
                            _candidate(
                                "2-d",
                                pred,
                                plan,
                                budget,
                                replicas=r,
                                step_s=step,
                                bubble=tl.bubble,
                                comm=comm,
                                call_s=rates.call_s,
                            )
                        )

    return rank(out, tie)
