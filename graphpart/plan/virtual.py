"""Schedules with virtual stages (pure): K devices, v chunks per device, V = K*v virtual stages.

The model is cut into V virtual stages; a placement says which device holds each. Device d's
chunks are its virtual stages in increasing order (chunk 0 is the earliest), so an action names
its device, kind, micro-batch and chunk, and the placement gives its virtual stage:

- "interleaved" (Megatron-LM, Narayanan et al. 2021): device d holds d, d+K, d+2K, ...; every
  boundary crosses devices, and the last device's chunk c feeds device 0's chunk c+1 (the
  wrap-around edge).
- "v" (ZB-V, Qi et al. 2024), v = 2: device d holds d and 2K-1-d; the forward runs down the
  devices and back up, so device K-1 holds stages K-1 and K (no hop there) and device 0 holds
  the first and the last stage (the loss).

Actions are `ChunkAction`s (an `Action` with a `chunk`), written "<device><kind><mb>" for chunk
0, as the one-chunk text form ("0F3"), and "<device><kind><mb>c<chunk>" otherwise ("0F3c1":
device 0, forward of micro-batch 3, chunk 1). `simulate` times a schedule over devices into the
`Timeline` of graphpart/plan/schedule.py (an event's `stage` is its device, its `action` a
ChunkAction); `validate` names the first action that breaks a rule. The generators
(`interleaved_1f1b`, `zb_v`) are in VIRTUAL, apart from `schedule.KINDS`: the executor does
not run them yet (docs/schedules.md says what it will need).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from graphpart.errors import PlanError
from graphpart.plan.schedule import (
    Action,
    Event,
    Timeline,
    peak_in_flight,
    per_stage,
)

PLACEMENTS = ("interleaved", "v")


@dataclass(frozen=True)
class ChunkAction(Action):
    """An `Action` of one chunk of a device: F, B, I or W of micro-batch `mb` on the device's
    chunk `chunk` (0 is its earliest virtual stage)."""

    chunk: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk < 0:
            raise PlanError(f"chunk {self.chunk} is negative; use 0 or more")

    def __str__(self) -> str:
        return f"{self.kind}{self.mb}" + (f"c{self.chunk}" if self.chunk else "")


ChunkSchedule = list[list[ChunkAction]]


@dataclass(frozen=True)
class Placement:
    """Which device holds each virtual stage: `owner[s]` is virtual stage s's device. Every
    device holds the same number of virtual stages, its chunks, in increasing order."""

    name: str
    owner: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.owner:
            raise PlanError("a placement needs at least one virtual stage")
        devices = max(self.owner) + 1
        counts = [self.owner.count(d) for d in range(devices)]
        if min(counts) != max(counts) or min(self.owner) < 0:
            raise PlanError(
                f"placement {self.name!r} gives devices {counts} virtual stages; "
                "every device 0..K-1 must hold the same number"
            )

    @property
    def devices(self) -> int:
        return max(self.owner) + 1

    @property
    def chunks(self) -> int:
        return len(self.owner) // self.devices

    @property
    def stages(self) -> int:
        return len(self.owner)

    def stages_of(self, device: int) -> tuple[int, ...]:
        """Device `device`'s virtual stages, chunk 0 first."""
        return tuple(s for s, d in enumerate(self.owner) if d == device)

    def stage(self, device: int, chunk: int) -> int:
        """The virtual stage of `device`'s chunk `chunk`."""
        held = self.stages_of(device)
        if not 0 <= chunk < len(held):
            raise PlanError(f"device {device} has chunks 0..{len(held) - 1}, not chunk {chunk}")
        return held[chunk]

    def chunk(self, stage: int) -> int:
        """The chunk index of virtual stage `stage` on its device."""
        return self.stages_of(self.owner[stage]).index(stage)


def _counts(devices: int, chunks: int, microbatches: int = 1) -> None:
    for name, n in (("devices", devices), ("chunks", chunks), ("microbatches", microbatches)):
        if n < 1:
            raise PlanError(f"{name}={n} is not positive; use 1 or more")


def interleaved_placement(devices: int, chunks: int) -> Placement:
    """Megatron's placement: device d holds virtual stages d, d+K, ..., d+(v-1)K."""
    _counts(devices, chunks)
    return Placement("interleaved", tuple(s % devices for s in range(devices * chunks)))


def v_placement(devices: int) -> Placement:
    """ZB-V's placement (two chunks): device d holds virtual stages d and 2K-1-d."""
    _counts(devices, 2)
    return Placement("v", tuple(range(devices)) + tuple(reversed(range(devices))))


def placement(name: str, devices: int, chunks: int) -> Placement:
    """The placement named `name` (one of PLACEMENTS); "v" needs chunks=2."""
    if name == "interleaved":
        return interleaved_placement(devices, chunks)
    if name == "v":
        if chunks != 2:
            raise PlanError(f"the V placement has 2 chunks per device, not {chunks}")
        return v_placement(devices)
    raise PlanError(f"placement {name!r} is unknown; use one of {', '.join(PLACEMENTS)}")


# -- text form ------------------------------------------------------------------------------
_TOKEN = re.compile(r"^(\d+)([FBIW])(\d+)(?:c(\d+))?$")


def format_action(device: int, action: Action) -> str:
    """ "0F3" (chunk 0, or a plain Action) or "0F3c1" (chunk 1)."""
    chunk = getattr(action, "chunk", 0)
    return f"{device}{action.kind}{action.mb}" + (f"c{chunk}" if chunk else "")


def format_schedule(schedule: Sequence[Sequence[Action]]) -> str:
    """One line per device, its actions in order ("0F0 0F1 0F0c1 ...")."""
    return "\n".join(" ".join(format_action(d, a) for a in acts) for d, acts in enumerate(schedule))


def parse_schedule(text: str) -> ChunkSchedule:
    """The schedule `format_schedule` wrote, or a hand-written one: tokens "<device><kind><mb>"
    (chunk 0) or "<device><kind><mb>c<chunk>", each device's in its order; "#" starts a
    comment. The one-chunk text form of graphpart/plan/zero_bubble.py reads the same. Names the
    first token it cannot read."""
    per: dict[int, list[ChunkAction]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        for tok in line.split("#", 1)[0].split():
            got = _TOKEN.match(tok)
            if got is None:
                raise PlanError(
                    f"line {n}: {tok!r} is not an action; write <device><kind><micro-batch>"
                    "[c<chunk>], kind one of F, B, I, W (e.g. 0F3, 1I2c1, 1W2c1)"
                )
            chunk = int(got[4]) if got[4] is not None else 0
            per.setdefault(int(got[1]), []).append(ChunkAction(got[2], int(got[3]), chunk))
    if not per:
        raise PlanError("the schedule lists no actions")
    missing = [d for d in range(max(per) + 1) if d not in per]
    if missing:
        raise PlanError(f"device {missing[0]} has no actions; every device from 0 needs some")
    return [per[d] for d in range(len(per))]


def lift(schedule: Sequence[Sequence[Action]]) -> ChunkSchedule:
    """A one-chunk schedule (graphpart/plan/schedule.py's) as chunk-0 ChunkActions."""
    return [[ChunkAction(a.kind, a.mb, getattr(a, "chunk", 0)) for a in acts] for acts in schedule]


_PLACEMENT_LINE = re.compile(r"^placement\s+(\S+)(?:\s+(\d+))?$")


def dump(where: Placement, schedule: Sequence[Sequence[Action]]) -> str:
    """A whole schedule as a file: "placement <name> <chunks>", then `format_schedule`."""
    if where.name not in PLACEMENTS:
        raise PlanError(f"placement {where.name!r} has no name to write; use one of PLACEMENTS")
    if placement(where.name, where.devices, where.chunks) != where:
        raise PlanError(f"placement {where.name!r} is not the one its name builds")
    return f"placement {where.name} {where.chunks}\n{format_schedule(schedule)}"


def load(text: str) -> tuple[Placement, ChunkSchedule]:
    """The placement and schedule `dump` wrote (or a hand-written file): a first line
    "placement interleaved <chunks>" or "placement v [2]", then the actions ("#" starts a
    comment anywhere). The device count is the schedule's."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.split("#", 1)[0].strip()), None)
    if first is None:
        raise PlanError("the file lists nothing; begin with 'placement interleaved <chunks>'")
    head = lines[first].split("#", 1)[0].strip()
    got = _PLACEMENT_LINE.match(head)
    if got is None:
        raise PlanError(
            f"the first line is {head!r}; begin with 'placement interleaved <chunks>' or "
            "'placement v'"
        )
    if got[1] == "interleaved" and got[2] is None:
        raise PlanError(
            "'placement interleaved' needs its chunks a device, e.g. 'placement interleaved 2'"
        )
    schedule = parse_schedule("\n".join(lines[first + 1 :]))
    chunks = 2 if got[2] is None else int(got[2])
    return placement(got[1], len(schedule), chunks), schedule


# -- simulation -----------------------------------------------------------------------------
def simulate(
    schedule: Sequence[Sequence[ChunkAction]],
    where: Placement,
    fwd: float | Sequence[float],
    bwd: float | Sequence[float],
    comm: float = 0.0,
    igrad: float | Sequence[float] | None = None,
    wgrad: float | Sequence[float] | None = None,
) -> Timeline:
    """Run `schedule` (one action list per device of `where`) with per-virtual-stage times.

    Each device runs its list strictly in order, one action at a time, each as early as
    allowed. F of virtual stage s waits for F of s-1 (plus `comm` if s-1 is on another device);
    B or I of s for the B or I of s+1 (plus `comm` across devices), the last virtual stage's for
    its own F; W for its own I. I and W take `igrad` and `wgrad` (default half of `bwd` each).
    Returns a Timeline whose events' `stage` is the device; its `peak_in_flight` counts
    micro-batch-chunks (an F adds one, its B or W frees it). Raises PlanError naming the stuck
    action if the schedule deadlocks, or an action a device runs twice or has no chunk for.
    """
    K = where.devices
    if len(schedule) != K:
        raise PlanError(f"schedule has {len(schedule)} devices, its placement {K}")
    V = where.stages
    b = per_stage("bwd", bwd, V, "virtual stage")
    half = [x / 2 for x in b]
    times = {
        "F": per_stage("fwd", fwd, V, "virtual stage"),
        "B": b,
        "I": half if igrad is None else per_stage("igrad", igrad, V, "virtual stage"),
        "W": half if wgrad is None else per_stage("wgrad", wgrad, V, "virtual stage"),
    }
    if not math.isfinite(comm) or comm < 0:
        raise PlanError(f"comm={comm} is invalid; use a finite number >= 0")
    held = [where.stages_of(d) for d in range(K)]
    key: list[list[tuple[str, int, int]]] = []  # per device: (kind, virtual stage, mb)
    for d, acts in enumerate(schedule):
        seen: set[tuple[str, int, int]] = set()
        for a in acts:
            if not 0 <= a.chunk < len(held[d]):
                raise PlanError(
                    f"device {d} runs {format_action(d, a)}, but has chunks 0..{len(held[d]) - 1}"
                )
            k = (a.kind, held[d][a.chunk], a.mb)
            if k in seen:
                raise PlanError(f"device {d} runs {format_action(d, a)} twice")
            seen.add(k)
        key.append([(a.kind, held[d][a.chunk], a.mb) for a in acts])
    split = {(s, m) for keys in key for kind, s, m in keys if kind == "I"}
    planned = {k for keys in key for k in keys}

    def dependency(kind: str, s: int, m: int) -> tuple[tuple[str, int, int], float] | None:
        """The (kind, virtual stage, mb) that must end first, and the delay after it."""
        if kind == "F":
            return None if s == 0 else (("F", s - 1, m), _hop(s - 1, s))
        if kind == "W":
            return ("I", s, m), 0.0
        if s == V - 1:
            return ("F", s, m), 0.0
        return ("I" if (s + 1, m) in split else "B", s + 1, m), _hop(s + 1, s)

    def _hop(a: int, b_: int) -> float:
        return 0.0 if where.owner[a] == where.owner[b_] else comm

    done: dict[tuple[str, int, int], float] = {}
    free = [0.0] * K
    pos = [0] * K
    events: list[Event] = []
    progress = True
    while progress:
        progress = False
        for d in range(K):
            while pos[d] < len(key[d]):
                kind, s, m = key[d][pos[d]]
                dep = dependency(kind, s, m)
                ready = 0.0
                if dep is not None:
                    if dep[0] not in done:
                        break
                    ready = done[dep[0]] + dep[1]
                start = max(free[d], ready)
                end = start + times[kind][s]
                done[kind, s, m] = free[d] = end
                events.append(Event(d, schedule[d][pos[d]], start, end))
                pos[d] += 1
                progress = True

    stuck = []
    for d in range(K):
        if pos[d] < len(key[d]):
            kind, s, m = key[d][pos[d]]
            dep = dependency(kind, s, m)
            assert dep is not None  # virtual stage 0's forwards wait for nothing
            dk, ds, dm = dep[0]
            other = ChunkAction(dk, dm, where.chunk(ds))
            never = "" if dep[0] in planned else f", which device {where.owner[ds]} never runs"
            stuck.append(
                f"schedule deadlocks: device {d} is stuck at "
                f"{format_action(d, schedule[d][pos[d]])} (step {pos[d]}, virtual stage {s}), "
                f"waiting for {format_action(where.owner[ds], other)} "
                f"(virtual stage {ds}){never}"
            )
    if stuck:  # name a missing action if that is the cause, else the first stuck device
        raise PlanError(next((x for x in stuck if "never runs" in x), stuck[0]))

    events.sort(key=lambda ev: (ev.start, ev.stage))
    busy = tuple(math.fsum(ev.end - ev.start for ev in events if ev.stage == d) for d in range(K))
    makespan = max((ev.end for ev in events), default=0.0)
    bubble = 1.0 - math.fsum(busy) / (K * makespan) if makespan > 0 else 0.0
    return Timeline(
        events=tuple(events),
        makespan=makespan,
        busy=busy,
        bubble=bubble,
        peak_in_flight=tuple(peak_in_flight(acts) for acts in schedule),
    )


def draw(timeline: Timeline, per_unit: float = 1.0) -> str:
    """Two rows per device, `per_unit` characters per unit of time: the first shows each
    action's micro-batch (0-9 F, a-j B or I, A-J W, . idle), the second its chunk."""
    devices = len(timeline.busy)
    cols = max(1, math.ceil(timeline.makespan * per_unit - 1e-9))
    rows = [["."] * cols for _ in range(devices)]
    marks = [[" "] * cols for _ in range(devices)]
    for ev in timeline.events:
        digit = ev.action.mb % 10
        char = {"F": "0123456789", "W": "ABCDEFGHIJ"}.get(ev.action.kind, "abcdefghij")[digit]
        first = max(0, math.ceil(ev.start * per_unit - 0.5))
        last = min(cols, math.ceil(ev.end * per_unit - 0.5))
        for c in range(first, last):
            rows[ev.stage][c] = char
            marks[ev.stage][c] = str(getattr(ev.action, "chunk", 0))
    label = len(f"device {devices - 1} ")
    lines = []
    for d in range(devices):
        lines.append(f"{f'device {d}':<{label}}|{''.join(rows[d])}|")
        lines.append(f"{'chunk':>{label - 1}} |{''.join(marks[d])}|")
    lines.append(f"makespan {timeline.makespan:.4g}, bubble {timeline.bubble:.1%}")
    return "\n".join(lines)


# -- validation -----------------------------------------------------------------------------
def validate(
    schedule: Sequence[Sequence[ChunkAction]], where: Placement, microbatches: int
) -> None:
    """Raise PlanError naming the first action that breaks a rule: one action list per device
    of `where`; every action on a chunk its device has and a micro-batch below `microbatches`;
    each (virtual stage, micro-batch) has its F once and either its B or its I and W once
    each, F before I (or B) before W, on the device its placement says (an action names its
    device's chunk, so it is there by construction); and the whole runs without deadlock
    (simulated, which names the stuck action)."""
    if len(schedule) != where.devices:
        raise PlanError(
            f"schedule has {len(schedule)} devices; placement {where.name!r} has {where.devices}"
        )
    for d, acts in enumerate(schedule):
        chunks = len(where.stages_of(d))
        seen: set[tuple[str, int, int]] = set()
        for i, a in enumerate(acts):
            at = f"device {d}, action {i} ({format_action(d, a)})"
            if a.chunk >= chunks:
                raise PlanError(f"{at}: chunk {a.chunk}, but device {d} has {chunks}")
            if a.mb >= microbatches:
                raise PlanError(f"{at}: micro-batch {a.mb}, but there are {microbatches}")
            if (a.kind, a.chunk, a.mb) in seen:
                raise PlanError(f"{at}: runs twice")
            needs = {"F": None, "B": "F", "I": "F", "W": "I"}[a.kind]
            if needs is not None and (needs, a.chunk, a.mb) not in seen:
                before = format_action(d, ChunkAction(needs, a.mb, a.chunk))
                raise PlanError(f"{at}: comes before {before} on its device")
            other = {"B": "I", "I": "B"}.get(a.kind)
            if other is not None and (other, a.chunk, a.mb) in seen:
                raise PlanError(
                    f"{at}: micro-batch {a.mb} of chunk {a.chunk} has both a B and an I"
                )
            seen.add((a.kind, a.chunk, a.mb))
        for c in range(chunks):
            for m in range(microbatches):
                need = ("F", "B") if ("B", c, m) in seen else ("F", "I", "W")
                gone = [kind for kind in need if (kind, c, m) not in seen]
                if gone:
                    missing = format_action(d, ChunkAction(gone[0], m, c))
                    raise PlanError(f"device {d} never runs {missing}")
    simulate(schedule, where, 1.0, 2.0)  # a deadlock names the stuck action


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
    _counts(devices, chunks, microbatches)
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
    _counts(devices, 2, microbatches)
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
    _counts(K, where.chunks, M)
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


# Apart from schedule.KINDS: the executor runs one stage a worker and cannot run these yet.
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
    _counts(devices, chunks, microbatches)
    entry = VIRTUAL[kind]
    where = placement(entry.placement, devices, chunks)
    return where, entry.build(devices, chunks, microbatches)


# -- what a device holds ----------------------------------------------------------------------
def chunk_peaks(actions: Sequence[ChunkAction], chunks: int) -> tuple[tuple[int, int], ...]:
    """For each chunk of one device's list, (the most micro-batches holding its activations,
    from F to B or W; the most between I and W, holding their cotangents for W): the activation
    and pending slots a worker allocating per chunk needs. Their sum over chunks can exceed the
    device's `peak_in_flight`, which counts all chunks at once."""
    live = [[0, 0] for _ in range(chunks)]
    peak = [[0, 0] for _ in range(chunks)]
    step = {"F": (1, 0), "B": (-1, 0), "I": (0, 1), "W": (-1, -1)}
    for a in actions:
        if not 0 <= a.chunk < chunks:
            raise PlanError(f"{a} names chunk {a.chunk}; the device has chunks 0..{chunks - 1}")
        for i, delta in enumerate(step[a.kind]):
            live[a.chunk][i] += delta
            peak[a.chunk][i] = max(peak[a.chunk][i], live[a.chunk][i])
    return tuple((held, pending) for held, pending in peak)


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
