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
#   one forward to every backward;
# - a transfer costs `hop_s + bytes / copy_bytes_per_s` (linear), and a pipeline's hops all
#   take the time of its widest boundary (the simulator takes one delay for every hop);
# - the optimizer update streams its buffers once: (3 + 2 x state slots) x parameter bytes
#   (read weight and gradient, write weight; read and write each state slot) over
#   `copy_bytes_per_s`; each device updates its own parameters when its last backward ends;
# - data parallel: every replica runs ceil(B / K) rows as one micro-batch, then a ring
#   all-reduce of the gradients, 2 (K - 1) messages of P / K bytes, each one hop.
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
#   device at equal FLOPs; it defaults to `hop_s`, the same order of magnitude (one call
#   through the worker), so the three measured rates suffice.
# - Data-parallel candidates do not recompute (the data-parallel engine has no such option).

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from graphpart.errors import PlanError
from graphpart.ir.graph import Graph
from graphpart.plan import schedule as sch
from graphpart.plan import timing
from graphpart.plan.memory import (
    MemoryPrediction,
    Workload,
    budget_problem,
    param_bytes,
    predict,
    predict_data_parallel,
)
from graphpart.plan.partition import partition
from graphpart.plan.stages import Plan
from graphpart.units import human_bytes
from graphpart.units import table as text_table

__all__ = ["KINDS", "TIE", "Candidate", "Rates", "rank", "search", "step_time", "table", "to_dict"]

KINDS = ("single", "accumulate", "pipeline", "data-parallel")
TIE = 0.03  # predicted steps this close (relative) are a tie: within the rates' run-to-run noise


def _finite(name: str, v: Any, *, positive: bool, inf_ok: bool = False) -> None:
    ok = isinstance(v, int | float | np.number) and not isinstance(v, bool)
    ok = ok and (math.isfinite(v) or (inf_ok and v == math.inf))
    if not ok or not (v > 0 if positive else v >= 0):
        want = "a number > 0" if positive else "a finite number >= 0"
        raise PlanError(f"Rates.{name}={v!r} is invalid; use {want}")


@dataclass(frozen=True)
class Rates:
    """What one device does per second, for the time model; the CLI measures them on the
    machine it runs on (a timed matmul, a timed copy, a timed small hop).

    flops_per_s: sustained matmul rate of one device. copy_bytes_per_s: memcpy bandwidth
    between devices (also the optimizer update's streaming rate; inf: free). hop_s: fixed
    latency of one boundary transfer or one all-reduce message. action_s: fixed cost of one
    forward or backward action on a device (None: hop_s). by_rows: (rows, FLOP/s) pairs
    measured at several micro-batch sizes (a matmul with few rows runs far below the peak);
    where given, `flops_at(rows)` interpolates them and the time model uses it.
    """

    flops_per_s: float
    copy_bytes_per_s: float
    hop_s: float
    action_s: float | None = None
    by_rows: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        _finite("flops_per_s", self.flops_per_s, positive=True)
        _finite("copy_bytes_per_s", self.copy_bytes_per_s, positive=True, inf_ok=True)
        _finite("hop_s", self.hop_s, positive=False)
        if self.action_s is not None:
            _finite("action_s", self.action_s, positive=False)
        for rows, rate in self.by_rows:
            _finite(f"by_rows rate at {rows} rows", rate, positive=True)
            if rows < 1:
                raise PlanError(f"by_rows: rows={rows!r} must be a positive integer")

    @property
    def per_action_s(self) -> float:
        return self.hop_s if self.action_s is None else float(self.action_s)

    def flops_at(self, rows: float) -> float:
        """The matmul rate at `rows` rows per micro-batch: interpolated in log(rows) between
        the measured points (the nearest end outside them); flops_per_s without points."""
        pts = sorted(self.by_rows)
        if not pts:
            return self.flops_per_s
        if rows <= pts[0][0]:
            return pts[0][1]
        for (r0, f0), (r1, f1) in zip(pts, pts[1:], strict=False):
            if rows <= r1:
                w = (math.log(rows) - math.log(r0)) / (math.log(r1) - math.log(r0))
                return f0 + w * (f1 - f0)
        return pts[-1][1]

    def transfer_s(self, nbytes: float) -> float:
        """One message of `nbytes`: the hop latency plus the bytes at the copy bandwidth."""
        return self.hop_s + nbytes / self.copy_bytes_per_s


@dataclass(frozen=True)
class Candidate:
    """One training setup with its predicted per-device memory and speed.

    kind: "single" (one device, one micro-batch), "accumulate" (one device, M micro-batches),
    "pipeline" (K stages on K devices) or "data-parallel" (K replicas). `peak_bytes` holds one
    total per device used (stage k or replica k); `worst_bytes` is the fullest device's bytes
    by category. `fits` is False when some device exceeds the budget, and `problem` then says
    which (graphpart.plan.memory.budget_problem). `bubble` is the pipeline's idle share from
    the simulator (0 for one stage and for data parallel); `comm_bytes_per_step` what crosses
    between devices in a step (pipeline: activations and their gradients over every boundary;
    data parallel: what one replica sends in a ring all-reduce).
    """

    kind: str
    devices: int
    stages: int
    microbatches: int
    schedule: str
    recompute: bool
    replicas: int
    split: tuple[int, ...]  # layers per stage (one entry: the whole model on each device)
    peak_bytes: tuple[int, ...]  # predicted peak per device
    worst_device: int
    worst_bytes: dict[str, int] = field(hash=False)  # by category, of worst_device
    fits: bool
    problem: str | None
    step_s: float
    samples_per_s: float
    bubble: float
    comm_bytes_per_step: int
    memory: MemoryPrediction = field(compare=False, hash=False, repr=False)
    rank: int = 0  # 1 = best; tied candidates share one (set by `rank`)
    tied: bool = False  # another candidate has the same rank

    @property
    def rank_label(self) -> str:
        """The rank as the table shows it: '3', or '=3' in a tie."""
        return f"={self.rank}" if self.tied else str(self.rank)

    @property
    def max_peak(self) -> int:
        return max(self.peak_bytes)

    def config(self) -> dict[str, Any]:
        """The config keys that reproduce this setup (graphpart.run.config)."""
        return {
            "pipeline.stages": self.stages,
            "pipeline.microbatches": self.microbatches,
            "pipeline.schedule": self.schedule,
            "pipeline.recompute": self.recompute,
            "pipeline.data_parallel": self.replicas,
        }


# -- time --------------------------------------------------------------------------------------
def _update_s(nbytes: int, slots: int, rates: Rates) -> float:
    return (3 + 2 * slots) * nbytes / rates.copy_bytes_per_s


def step_time(
    plan: Plan, w: Workload, *, rates: Rates, capacity: float | None = None
) -> tuple[float, sch.Timeline]:
    """Predicted seconds of one training step of `plan` (any K, 1 included) on workload `w`
    and the simulator's timeline: each stage's per-micro-batch forward and backward seconds
    and its optimizer update (`w.slots` state buffers per parameter) after its last action, through
    graphpart.plan.timing.pipeline_step (the model compare's projection uses), on a machine
    that runs `capacity` devices at full speed at once (None: a core per device).
    """
    rows, dtype = w.batch / w.microbatches, w.dtype
    act = rates.per_action_s
    rate = rates.flops_at(rows)
    fwd = [st.flops_fwd * rows / rate + act for st in plan.stages]
    bwd = [
        st.flops_bwd * rows / rate + act + (f - act if w.recompute else 0.0)
        for st, f in zip(plan.stages, fwd, strict=True)
    ]
    itemsize = np.dtype(dtype).itemsize
    width = max((st.output_width for st in plan.stages), default=0)
    comm = rates.transfer_s(rows * width * itemsize) if plan.k > 1 else 0.0
    finish = [_update_s(param_bytes(st.graph, dtype), w.slots, rates) for st in plan.stages]
    return timing.pipeline_step(w.schedule, w.microbatches, fwd, bwd, finish, comm, capacity)


def _data_parallel_time(
    plan: Plan, replicas: int, w: Workload, rates: Rates, capacity: float | None = None
) -> float:
    (st,) = plan.stages
    rows = -(-w.batch // replicas)
    compute = (st.flops_fwd + st.flops_bwd) * rows / rates.flops_at(rows) + 2 * rates.per_action_s
    p = param_bytes(plan.graph, w.dtype)
    ring = 2 * (replicas - 1) * rates.transfer_s(p / replicas)
    return timing.replicas_step(compute, ring, _update_s(p, w.slots, rates), replicas, capacity)


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
) -> Candidate:
    worst = max(pred.stages, key=lambda s: (s.total, -s.index))
    problem = None if budget is None else budget_problem(pred, budget)
    devices = replicas if kind == "data-parallel" else plan.k
    return Candidate(
        kind=kind,
        devices=devices,
        stages=plan.k,
        microbatches=1 if kind == "data-parallel" else pred.microbatches,
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

    Enumerates: one device (M = 1, recompute off/on); gradient accumulation (one device,
    M > 1 from `microbatch_choices`, recompute off/on); pipelines of K = 2..min(devices,
    layers) stages split by graphpart.plan.partition's "balanced" strategy, each M in
    `microbatch_choices` (M <= batch), GPipe and 1F1B, recompute off/on; data parallelism
    with K = 2..min(devices, batch) replicas. Memory comes from graphpart.plan.memory and is
    checked against `budget` bytes per device (None: no budget); time from `step_time` (see
    the assumptions at the top of this module) on a machine of `cores` cores whose devices
    each use `threads` of them (None: a core per device), so that K devices on fewer cores
    share them. Ranked by `rank` (fitting candidates first; see there): ties, step times
    within `tie` of a group's fastest, share one rank and are ordered fewest devices first,
    then smallest peak.
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
    for m in [1, *(m for m in choices if 1 < m <= batch)]:
        for recompute in (False, True):
            wm = replace(base, microbatches=m, schedule="1f1b", recompute=recompute)
            step, _ = step_time(one, wm, rates=rates, capacity=capacity)
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
                    step, tl = step_time(plan, wm, rates=rates, capacity=capacity)
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
                        )
                    )

    p = param_bytes(graph, dt)
    for k in range(2, min(devices, batch) + 1):
        pred = predict_data_parallel(one, k, base, channels=True)
        step = _data_parallel_time(one, k, base, rates, capacity)
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
            )
        )

    return rank(out, tie)


def _order_key(c: Candidate) -> tuple:
    """Within a tie: fewest devices, then the smallest peak, then a fixed order of the rest."""
    return (
        c.devices,
        c.max_peak,
        KINDS.index(c.kind),
        c.stages,
        c.microbatches,
        c.schedule,
        c.recompute,
        c.replicas,
    )


def rank(candidates: Sequence[Candidate], tie: float = TIE) -> list[Candidate]:
    """`candidates` in rank order, each with its `rank` and `tied` set.

    Fitting candidates first. Then, from the fastest candidate not yet ranked, every one whose
    predicted step is within `tie` (relative) of its step forms a group: the predictions'
    noise (the measured rates vary by a few percent between runs) cannot order them, so they
    share the group's rank (its first position, as in 1, =2, =2, 4) and are listed by
    `_order_key`, fewest devices and smallest peak first, which is deterministic.
    """
    if not (isinstance(tie, int | float) and 0 <= tie < 1):
        raise PlanError(f"tie={tie!r}: must be a number in [0, 1)")
    pending = sorted(candidates, key=lambda c: (not c.fits, c.step_s, _order_key(c)))
    out: list[Candidate] = []
    while pending:
        lead = pending[0]
        limit = lead.step_s * (1 + tie)
        n = 1
        while n < len(pending) and pending[n].fits == lead.fits and pending[n].step_s <= limit:
            n += 1
        group, pending = sorted(pending[:n], key=_order_key), pending[n:]
        first = len(out) + 1
        out += [replace(c, rank=first, tied=n > 1) for c in group]
    return out


# -- reports -----------------------------------------------------------------------------------
def _peaks(values: Sequence[int]) -> str:
    """Per-device peaks in one unit: '1.20/0.80/0.80 MiB'; 'K x 1.20 MiB' when all equal."""
    if len(set(values)) == 1 and len(values) > 1:
        return f"{len(values)} x {human_bytes(values[0])}"
    top = max(values)
    unit, scale = next(
        ((u, s) for u, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)) if top >= s),
        ("B", 1),
    )
    nums = "/".join(f"{v / scale:.0f}" if scale == 1 else f"{v / scale:.2f}" for v in values)
    return f"{nums} {unit}"


def _fit(c: Candidate) -> str:
    return "yes" if c.fits else f"no: dev {c.worst_device} needs {human_bytes(c.max_peak)}"


def table(candidates: Sequence[Candidate], limit: int | None = 10) -> str:
    """The first `limit` candidates (all: None) as a text table, rank 1 first."""
    headers = [
        "rank",
        "kind",
        "K",
        "M",
        "schedule",
        "recompute",
        "replicas",
        "split",
        "peak per device",
        "fits",
        "samples/s",
        "step",
        "bubble",
        "comm/step",
    ]
    shown = list(candidates) if limit is None else list(candidates)[:limit]
    rows = [
        [
            c.rank_label if c.rank else i,
            c.kind,
            c.stages,
            c.microbatches,
            c.schedule if c.kind == "pipeline" else "-",
            "yes" if c.recompute else "no",
            c.replicas,
            "+".join(str(s) for s in c.split),
            _peaks(c.peak_bytes),
            _fit(c),
            f"{c.samples_per_s:,.0f}",
            f"{c.step_s * 1e3:.2f} ms",
            f"{c.bubble:.0%}",
            human_bytes(c.comm_bytes_per_step) if c.comm_bytes_per_step else "-",
        ]
        for i, c in enumerate(shown, 1)
    ]
    return text_table(headers, rows)


def to_dict(c: Candidate) -> dict[str, Any]:
    """A JSON-ready record of `c`: its fields, the config keys, the largest peak, and the full
    memory prediction (graphpart.plan.memory.MemoryPrediction.to_dict)."""
    out: dict[str, Any] = {}
    for f in fields(c):
        v = getattr(c, f.name)
        if f.name == "memory":
            v = v.to_dict()
        elif isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, dict):
            v = dict(v)
        out[f.name] = v
    out["max_peak"] = c.max_peak
    out["config"] = c.config()
    return out
