"""Virtual-stage schedules generated (pure): interleaved 1F1B and ZB-V, VIRTUAL and `make`,
and one step's time (graphpart/plan/virtual.py: the IR; virtual_sim: the simulator)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from graphpart.errors import PlanError
from graphpart.plan.schedule import (
    Timeline,
)
from graphpart.plan.virtual import (
    ChunkAction,
    ChunkSchedule,
    Placement,
    check_counts,
    placement,
    v_placement,
)
from graphpart.plan.virtual_sim import simulate


# -- generators -----------------------------------------------------------------------------
def _groups(devices: int, microbatches: int) -> list[range]:
    """Micro-batches in R = max(1, M // K) consecutive groups of sizes as equal as possible,
    the larger first: every group has at least K when M >= K (one group of M when M < K)."""
    rounds = max(1, microbatches // devices)
    size, extra = divmod(microbatches, rounds)
    out, first = [], 0
    for r in range(rounds):
        n = size + (r < extra)
        out.append(range(first, first + n))
        first += n
    return out


# Interleaved 1F1B (Megatron-LM, Narayanan et al. 2021), interleaved placement (device d holds
# virtual stages d, d+K, ...). Every device runs its forwards in one order: the micro-batches in
# groups, each group through chunk 0, then chunk 1, ..., then the next group; its backwards in
# the same order with the chunks reversed. Device d runs warmup = 2(K-d-1) + (v-1)g forwards (g:
# the first group's size; K-d-1 when v = 1, so v = 1 is 1F1B exactly), then one forward and one
# backward in turn, then the remaining backwards. When K divides M the groups have K each and
# this is Megatron's schedule. Otherwise there are max(1, M // K) groups of floor or ceil of M
# over that many (M = 6, K = 4: one group of 6; M = 10: 5 and 5), so no group is shorter than K
# and a micro-batch that leaves device K-1 never finds device 0 idle for want of work (a short
# last group of M mod K, as Megatron-core's table has, deadlocks or loses to 1F1B; M < K: one
# group of M). K=2, v=2, M=4, F = 1 and B = 2 per virtual stage (bubble 11.1%; 1F1B's 20.0%):
#
#   device 0 |01012.aa3bb2aa3bb.cc.ddccdd|
#      chunk |00110 11011100100 11 110000|
#   device 1 |.010aa1bb2aa3bb2cc3ddccdd..|
#      chunk | 001111110000001111110000  |
#   makespan 27, bubble 11.1%
#
# bubble = (K-1)/v / (M + (K-1)/v) for M >= K: 1F1B's (K-1)/(M+K-1) divided by about v, for
# up to (v-1)g + 2K - 1 micro-batch-chunks in flight on device 0 (1F1B's: K micro-batches).
def interleaved_1f1b(devices: int, chunks: int, microbatches: int) -> ChunkSchedule:
    """Interleaved 1F1B (Megatron-LM) on the interleaved placement: warmup forwards, then one
    forward and one backward in turn, then the remaining backwards."""
    check_counts(devices, chunks, microbatches)
    K, v = devices, chunks
    groups = _groups(K, microbatches)
    fwd = [(c, m) for group in groups for c in range(v) for m in group]
    bwd = [(v - 1 - c, m) for c, m in fwd]  # the same order, deepest chunk first
    total = len(fwd)
    out: ChunkSchedule = []
    for d in range(K):
        warm = K - d - 1 if v == 1 else 2 * (K - d - 1) + (v - 1) * len(groups[0])
        warm = min(warm, total)
        acts = [ChunkAction("F", m, c) for c, m in fwd[:warm]]
        for i in range(total - warm):
            c, m = fwd[warm + i]
            cb, mb = bwd[i]
            acts += [ChunkAction("F", m, c), ChunkAction("B", mb, cb)]
        acts += [ChunkAction("B", m, c) for c, m in bwd[total - warm :]]
        out.append(acts)
    return out


# ZB-V (Qi et al., Zero Bubble Pipeline Parallelism, ICLR 2024, section 6), V placement (device
# d holds virtual stages d and 2K-1-d), each backward split into I and W. Built by list
# scheduling on the simulator's rules (`chunk_list_schedule`), as ZB-H1 and ZB-H2 are: at each
# moment a device runs, of the actions it may start earliest, an I (the shallowest virtual
# stage's) or an F while fewer than 2K micro-batch-chunks hold activations on the device (the
# deepest virtual stage's, which reaches the loss soonest), then a W. It is built twice, I
# before F and F before I, and keeps the shorter (I first on a tie): neither wins everywhere.
# 2K chunks of half a device's layers are 1F1B's peak, its stage 0's K micro-batches of a
# whole stage.
# K=2, M=4, F = I = W = 1 per virtual stage (1F1B, F = 1 and B = 2 a stage: 20.0%):
#
#   device 0 |0120aA1abA3bB2cBCcC3dD.dD|
#      chunk |0001111010000111100111 00|
#   device 1 |.0011aaA2bbB2A3ccC3BCddDD|
#      chunk | 010110001001101001111001|
#   makespan 25, bubble 4.0%
#
# Not the paper's hand-placed schedule: what is left is a start-up and drain of K-1 chunk
# forwards a device at most, for K = 2-8 and M >= 2K, whatever M (2-6% at M = 8, 1-3% at
# M = 16 for K = 2-4).
def zb_v(devices: int, microbatches: int) -> ChunkSchedule:
    """ZB-V: V placement, I and W apart, at most 2K micro-batch-chunks of activations per
    device (1F1B's peak memory), W filling the bubbles."""
    check_counts(devices, 2, microbatches)
    where = v_placement(devices)
    limit = (2 * devices,) * devices
    tries = [chunk_list_schedule(where, microbatches, limit, first=f) for f in ("I", "F")]
    return min(tries, key=lambda s: simulate(s, where, 1.0, 2.0).makespan)  # first on a tie


def chunk_list_schedule(
    where: Placement,
    microbatches: int,
    limit: Sequence[int],
    fwd: float = 1.0,
    igrad: float = 1.0,
    wgrad: float = 1.0,
    comm: float = 0.0,
    first: str = "I",
) -> ChunkSchedule:
    """Each device's F, I and W of every (virtual stage, micro-batch), placed by list
    scheduling: at each moment a device runs, of the actions it may start earliest, an I (the
    shallowest virtual stage's) and an F while fewer than `limit[d]` micro-batch-chunks hold
    activations on device d (from F to W; the deepest virtual stage's), `first` ("I" or "F")
    before the other, then a W. Each virtual stage takes its micro-batches in order. Raises
    PlanError if the limits stall it."""
    K, V, M = where.devices, where.stages, microbatches
    check_counts(K, where.chunks, M)
    if len(limit) != K or min(limit) < 1:
        raise PlanError(f"limit {list(limit)}: give one count of 1 or more per device")
    cost = {"F": fwd, "I": igrad, "W": wgrad}
    end: dict[tuple[str, int, int], float] = {}
    free = [0.0] * K
    live = [0] * K
    nxt = [{"F": 0, "I": 0, "W": 0} for _ in range(V)]
    out: ChunkSchedule = [[] for _ in range(K)]

    def hop(a: int, b: int) -> float:
        return 0.0 if where.owner[a] == where.owner[b] else comm

    def ready(kind: str, s: int) -> float | None:
        """When virtual stage s could start its next `kind` action (None: not yet)."""
        d, m = where.owner[s], nxt[s][kind]
        if m >= M:
            return None
        if kind == "F":
            if live[d] >= limit[d]:
                return None
            dep = 0.0 if s == 0 else end.get(("F", s - 1, m))
            delay = 0.0 if s == 0 else hop(s - 1, s)
        elif kind == "I":
            if ("F", s, m) not in end:
                return None
            dep = end[("F", s, m)] if s == V - 1 else end.get(("I", s + 1, m))
            delay = 0.0 if s == V - 1 else hop(s + 1, s)
        else:
            dep, delay = end.get(("I", s, m)), 0.0
        return None if dep is None else max(free[d], dep + delay)

    if first not in ("I", "F"):
        raise PlanError(f"first={first!r}: use 'I' or 'F'")
    rank = {"I": 0, "F": 1, "W": 2} if first == "I" else {"F": 0, "I": 1, "W": 2}
    for _ in range(3 * V * M):
        options = [
            (t, rank[kind], -s if kind == "F" else s, s, kind)
            for s in range(V)
            for kind in ("I", "F", "W")
            if (t := ready(kind, s)) is not None
        ]
        if not options:
            raise PlanError(f"list scheduling stalled with limits {list(limit)}")
        t, _, _, s, kind = min(options)
        d, m = where.owner[s], nxt[s][kind]
        end[kind, s, m] = free[d] = t + cost[kind]
        nxt[s][kind] += 1
        live[d] += {"F": 1, "I": 0, "W": -1}[kind]
        out[d].append(ChunkAction(kind, m, where.chunk(s)))
    return out


def _interleaved(devices: int, chunks: int, microbatches: int) -> ChunkSchedule:
    return interleaved_1f1b(devices, chunks, microbatches)


def _zb_v(devices: int, chunks: int, microbatches: int) -> ChunkSchedule:
    if chunks != 2:
        raise PlanError(f"zbv has 2 chunks per device (a V), not {chunks}")
    return zb_v(devices, microbatches)


@dataclass(frozen=True)
class VirtualKind:
    """A schedule with virtual stages: its placement's name and its generator."""

    placement: str
    build: Callable[[int, int, int], ChunkSchedule]


# Apart from schedule.KINDS (one stage a device); graphpart/plan/kinds.py names both.
VIRTUAL: dict[str, VirtualKind] = {
    "interleaved": VirtualKind("interleaved", _interleaved),
    "zbv": VirtualKind("v", _zb_v),
}


def make(
    kind: str, devices: int, chunks: int, microbatches: int
) -> tuple[Placement, ChunkSchedule]:
    """The schedule named `kind` (one of VIRTUAL) on `devices` devices with `chunks` chunks
    each, and its placement."""
    if kind not in VIRTUAL:
        raise PlanError(f"schedule {kind!r} is unknown; use one of {', '.join(VIRTUAL)}")
    check_counts(devices, chunks, microbatches)
    entry = VIRTUAL[kind]
    where = placement(entry.placement, devices, chunks)
    return where, entry.build(devices, chunks, microbatches)


# -- one step -------------------------------------------------------------------------------
def pipeline_step(
    kind: str,
    chunks: int,
    microbatches: int,
    fwd: Sequence[float],
    bwd: Sequence[float],
    finish: Sequence[float],
    hop_s: float,
    igrad: Sequence[float] | None = None,
    wgrad: Sequence[float] | None = None,
) -> tuple[float, Timeline]:
    """Seconds of one step of the `kind` schedule (one of VIRTUAL) on K = len(finish) devices,
    `chunks` each, and its timeline: virtual stage s's forward and backward of one micro-batch
    take fwd[s] and bwd[s] (I and W igrad[s] and wgrad[s]; None: half of bwd[s] each), a hop
    between devices `hop_s`, and device d's finish[d] (its optimizer update, all its chunks)
    follows its last action. timing.pipeline_step's model with a core per device; sharing
    cores (its `capacity`) is not modelled here yet."""
    fin = [float(f) for f in finish]
    where, schedule = make(kind, len(fin), chunks, microbatches)
    tl = simulate(schedule, where, fwd, bwd, hop_s, igrad, wgrad)
    end = [0.0] * where.devices
    for ev in tl.events:
        end[ev.stage] = max(end[ev.stage], ev.end)
    return max(e + f for e, f in zip(end, fin, strict=True)), tl
