"""The setups `plan --auto` weighs: the rates they are timed at, their records, rank and table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from graphpart.errors import PlanError
from graphpart.plan.layer_times import LayerTimes
from graphpart.plan.memory import MemoryPrediction
from graphpart.units import human_bytes
from graphpart.units import table as text_table

KINDS = ("single", "accumulate", "pipeline", "data-parallel", "2-d")
RING_COPIES = 4.5  # a ring step's copies of its chunk: send 1 + add 1.5, then send 1 + take 1
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
    forward or backward action on a device (None: ring_hop_s where measured, else hop_s).
    by_rows: (rows, FLOP/s) pairs measured at several micro-batch sizes (a matmul with few
    rows runs far below the peak); where given, `flops_at(rows)` interpolates them and the
    time model uses it. layers: each layer's F, I, W and update seconds measured with the
    real kernels (LayerTimes); where given, the time model reads an action's and an update's
    time from them instead of FLOPs over the matmul rate and bytes over the copy rate.
    ring_copies and ring_hop_s: what a ring step costs (`ring_s`), in copies of its chunk at
    the copy rate and a fixed latency (None: hop_s); plan --auto measures both where devices
    run together, from rings of two sizes. Where ring_hop_s is measured it is also a
    pipeline hop's latency and an action's fixed cost (`transfer_s`, `per_action_s`): the
    same shared-memory message between two busy processes. together: (n, the same rates
    measured with n devices busy at once) pairs, n >= 2 increasing (plan --auto measures
    n = 2, 4, 8, ... and the most it can), as the devices of a pipeline or of data
    parallelism run: they share the caches and the memory bus, and a copy or an update that
    streams its buffers alone at one rate runs at another beside a second device streaming
    its own; `busy(n)` picks the rates for a setup on n devices. call_s: the driver's call
    to a multi-process run's workers and their replies, once a step (Ray's actor calls:
    plan --auto times them; 0 where not measured), which a setup on one device, run in
    process, does not make. whole: the same rates measured with every core's threads, as a
    one-device run in process uses them (`graphpart train` on one device does), where
    they differ from a device's; a one-device setup is timed at them.
    """

    flops_per_s: float
    copy_bytes_per_s: float
    hop_s: float
    action_s: float | None = None
    by_rows: tuple[tuple[int, float], ...] = ()
    layers: LayerTimes | None = None
    together: tuple[tuple[int, Rates], ...] = ()
    ring_copies: float = RING_COPIES
    ring_hop_s: float | None = None
    call_s: float = 0.0
    whole: Rates | None = None

    def __post_init__(self) -> None:
        _finite("flops_per_s", self.flops_per_s, positive=True)
        _finite("call_s", self.call_s, positive=False)
        _finite("copy_bytes_per_s", self.copy_bytes_per_s, positive=True, inf_ok=True)
        _finite("hop_s", self.hop_s, positive=False)
        _finite("ring_copies", self.ring_copies, positive=False)
        if self.ring_hop_s is not None:
            _finite("ring_hop_s", self.ring_hop_s, positive=False)
        if self.action_s is not None:
            _finite("action_s", self.action_s, positive=False)
        for rows, rate in self.by_rows:
            _finite(f"by_rows rate at {rows} rows", rate, positive=True)
            if rows < 1:
                raise PlanError(f"by_rows: rows={rows!r} must be a positive integer")
        counts = [n for n, _ in self.together]
        if counts != sorted(set(counts)) or any(n < 2 for n in counts):
            raise PlanError(f"Rates.together for {counts} devices: want increasing counts >= 2")
        for n, r in self.together:
            if not isinstance(r, Rates) or r.together:
                raise PlanError(f"Rates.together for {n} devices: want Rates of its own")
        if self.whole is not None and (
            not isinstance(self.whole, Rates) or self.whole.together or self.whole.whole
        ):
            raise PlanError("Rates.whole: want Rates of its own (no together, no whole)")

    @property
    def one_device(self) -> Rates:
        """The rates a one-device setup runs at: `whole` where measured, else these."""
        return self if self.whole is None else self.whole

    def busy(self, devices: int) -> Rates:
        """The rates for a setup on `devices` devices busy at once: `together`'s for that
        many (its last where more devices than were measured), these rates for one."""
        if devices <= 1 or not self.together:
            return self
        return next((r for n, r in self.together if n >= devices), self.together[-1][1])

    @property
    def message_s(self) -> float:
        """A shared-memory message's latency: `ring_hop_s` (measured between busy
        processes) where measured, else `hop_s`."""
        return self.hop_s if self.ring_hop_s is None else self.ring_hop_s

    @property
    def per_action_s(self) -> float:
        """An action's fixed cost: `action_s`, else `message_s`."""
        return self.message_s if self.action_s is None else float(self.action_s)

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
        """One message of `nbytes`: the hop latency plus the bytes at the copy bandwidth.
        Where `ring_hop_s` is measured: that latency plus two copies (into the channel, out
        of it); `hop_s` is a whole hop's time less one copy, so it holds the other."""
        if self.ring_hop_s is not None:
            return self.ring_hop_s + 2 * nbytes / self.copy_bytes_per_s
        return self.hop_s + nbytes / self.copy_bytes_per_s

    def ring_s(self, nbytes: float, replicas: int) -> float:
        """A ring all-reduce of `nbytes` over `replicas` (workers/ring.py): 2 (R - 1)
        messages of nbytes / R, each a hop and a copy into the channel; the reduce-scatter's
        R - 1 adds (read two, write one: 1.5 copies each) and the all-gather's R - 1 copies
        out of the channel. So (R - 1) (2 hop + 4.5 nbytes / R / copy bandwidth), with
        `ring_hop_s` for the hop and `ring_copies` for the 4.5 where a ring was measured."""
        r = max(1, int(replicas))
        copies = self.ring_copies * nbytes / r / self.copy_bytes_per_s
        return (r - 1) * (2 * self.message_s + copies)


@dataclass(frozen=True)
class Candidate:
    """One training setup with its predicted per-device memory and speed.

    kind: "single" (one device, one micro-batch), "accumulate" (one device, M micro-batches),
    "pipeline" (K stages on K devices), "data-parallel" (K replicas) or "2-d" (R replicas of
    a K-stage pipeline on R x K devices). `peak_bytes` holds one total per device used (stage
    k, replica k, or worker (r, k) at r K + k); `worst_bytes` is the fullest device's bytes
    by category. `fits` is False when some device exceeds the budget, and `problem` then says
    which (graphpart.plan.memory.budget_problem). `bubble` is the pipeline's idle share from
    the simulator (0 for one stage and for data parallel); `comm_bytes_per_step` what crosses
    between devices in a step (pipeline: activations and their gradients over every boundary;
    data parallel: what one replica sends in a ring all-reduce; 2-d: both, of one replica).
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
    chunks: int = 1  # virtual stages a device (interleaved, zbv): `stages` devices x chunks

    @property
    def rank_label(self) -> str:
        """The rank as the table shows it: '3', or '=3' in a tie."""
        return f"={self.rank}" if self.tied else str(self.rank)

    @property
    def max_peak(self) -> int:
        return max(self.peak_bytes)

    def config(self) -> dict[str, Any]:
        """The config keys that reproduce this setup (graphpart.run.config)."""
        keys = {
            "pipeline.stages": self.stages,
            "pipeline.microbatches": self.microbatches,
            "pipeline.schedule": self.schedule,
            "pipeline.recompute": self.recompute,
            "pipeline.data_parallel": self.replicas,
        }
        if self.chunks > 1:
            keys["pipeline.chunks"] = self.chunks
        return keys


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


def _schedule(c: Candidate) -> str:
    """A pipeline's schedule (a 2-D setup's replicas' too), with its chunks a device where
    it has virtual stages."""
    if c.kind not in ("pipeline", "2-d"):
        return "-"
    return c.schedule + (f" v={c.chunks}" if c.chunks > 1 else "")


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
            _schedule(c),
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
