"""Pipeline schedules (GPipe, 1F1B, ZB-H1, ZB-H2) as per-stage action lists, and an event-driven
simulator.

Actions: F (forward), B (backward), or B split in two (the zero-bubble schedules): I, the input
gradient the previous stage waits for, and W, the weight gradient nobody waits for. A
micro-batch's activations live from its F to its B or W; the cotangents its W reads, from its
I to its W. The zero-bubble generators live here, beside `make`, so that every schedule is in
GENERATORS (zero_bubble imports this module); graphpart/plan/zero_bubble.py draws their
pictures and holds the text form and the validator. Schedules with several stages a device
(interleaved 1F1B, ZB-V) are graphpart/plan/virtual_schedules.py's, apart from GENERATORS
and KINDS; graphpart/plan/kinds.py names all of them (SCHEDULES).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from graphpart.errors import PlanError
from graphpart.plan.sweep import Key, sweep, waits_for

ACTION_KINDS = ("F", "B", "I", "W")


@dataclass(frozen=True)
class Action:
    """One step of a stage: the forward ("F") or backward ("B") pass of micro-batch `mb`, or
    the backward's input-gradient ("I") or weight-gradient ("W") part."""

    kind: str
    mb: int

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise PlanError(
                f"action kind {self.kind!r} is unknown; use one of {', '.join(ACTION_KINDS)}"
            )
        if self.mb < 0:
            raise PlanError(f"micro-batch {self.mb} is negative; use 0 or more")

    def __str__(self) -> str:
        return f"{self.kind}{self.mb}"


Schedule = list[list[Action]]


def _check(stages: int, microbatches: int) -> None:
    if stages < 1:
        raise PlanError(f"stages={stages} is not positive; use 1 or more")
    if microbatches < 1:
        raise PlanError(f"microbatches={microbatches} is not positive; use 1 or more")


# GPipe (fill-drain). Every stage runs all forwards in micro-batch order, then all backwards in
# REVERSE micro-batch order (the torchgpipe convention): the last stage starts the backward of
# the micro-batch it has just finished, and activations are freed last-in first-out. Every
# stage holds the activations of all M micro-batches at its peak. K=4 stages, M=4 micro-batches,
# unit forward and backward times (digits: forward of micro-batch m; letters: backward, a=0):
#
#   stage 0 |0123......dcba|
#   stage 1 |.0123....dcba.|
#   stage 2 |..0123..dcba..|
#   stage 3 |...0123dcba...|
#
# bubble = (K-1)/(M+K-1) = 3/7 of every stage's time.
def gpipe(stages: int, microbatches: int) -> Schedule:
    """GPipe fill-drain schedule: F0..F(M-1), then B(M-1)..B0, on every stage."""
    _check(stages, microbatches)
    fwd = [Action("F", m) for m in range(microbatches)]
    bwd = [Action("B", m) for m in reversed(range(microbatches))]
    return [fwd + bwd for _ in range(stages)]


# 1F1B (PipeDream-flush). Stage k runs warmup = min(K-k-1, M) forwards, then alternates one
# forward and one backward while forwards remain, then drains the remaining backwards; all in
# micro-batch order. The bubble equals GPipe's, but stage k only ever holds min(K-k, M)
# micro-batches of activations instead of M. K=4, M=6, unit times:
#
#   stage 0 |0123...a4b5c.d.e.f|
#   stage 1 |.012..a3b4c5d.e.f.|
#   stage 2 |..01.a2b3c4d5e.f..|
#   stage 3 |...0a1b2c3d4e5f...|
#
# bubble = (K-1)/(M+K-1) = 3/9, as for GPipe with the same K and M.
def one_f_one_b(stages: int, microbatches: int) -> Schedule:
    """1F1B schedule: warmup forwards, steady one-forward-one-backward, then drain backwards."""
    _check(stages, microbatches)
    schedule: Schedule = []
    for k in range(stages):
        warmup = min(stages - k - 1, microbatches)
        actions = [Action("F", m) for m in range(warmup)]
        for i in range(microbatches - warmup):
            actions += [Action("F", warmup + i), Action("B", i)]
        actions += [Action("B", m) for m in range(microbatches - warmup, microbatches)]
        schedule.append(actions)
    return schedule


def peak_in_flight(actions: Sequence[Action]) -> int:
    """Most micro-batches forwarded but not yet backwarded (B, or W where B is split) at any
    point of one stage's list."""
    live = peak = 0
    for action in actions:
        live += {"F": 1, "B": -1, "W": -1, "I": 0}[action.kind]
        peak = max(peak, live)
    return peak


def peak_pending(actions: Sequence[Action]) -> int:
    """Most micro-batches whose I ran and whose W has not yet, at any point of one stage's
    list: the cotangents the stage holds for its deferred weight gradients."""
    live = peak = 0
    for action in actions:
        live += {"I": 1, "W": -1}.get(action.kind, 0)
        peak = max(peak, live)
    return peak


@dataclass(frozen=True)
class Event:
    """One action as simulated: it ran on `stage` from `start` to `end`."""

    stage: int
    action: Action
    start: float
    end: float


LEGEND = "legend: 0-9 F of micro-batch m mod 10, a-j its B (or I), A-J its W, . idle"


@dataclass(frozen=True)
class Timeline:
    """Result of `simulate`: every event plus per-stage busy time and peak activations."""

    events: tuple[Event, ...]
    makespan: float
    busy: tuple[float, ...]
    bubble: float
    peak_in_flight: tuple[int, ...]

    def ascii(self, width: int = 80) -> str:
        """Draw one row per stage, time left to right, scaled to `width` characters per row."""
        stages = len(self.busy)
        label = len(f"stage {stages - 1} |")
        cols = width - label - 1
        if cols < 1:
            raise PlanError(f"width={width} leaves no room for the timeline; use {label + 2}+")
        rows = [["."] * cols for _ in range(stages)]
        scale = cols / self.makespan if self.makespan > 0 else 0.0
        for ev in self.events:
            digit = ev.action.mb % 10
            char = {"F": "0123456789", "W": "ABCDEFGHIJ"}.get(ev.action.kind, "abcdefghij")[digit]
            # a cell shows the event that covers its midpoint
            first = max(0, math.ceil(ev.start * scale - 0.5))
            last = min(cols, math.ceil(ev.end * scale - 0.5))
            for c in range(first, last):
                rows[ev.stage][c] = char
        lines = [f"{f'stage {k}':<{label - 2}} |{''.join(row)}|" for k, row in enumerate(rows)]
        lines.append(f"makespan {self.makespan:.4g}, bubble {self.bubble:.1%}")
        lines.append(LEGEND)
        return "\n".join(lines)


def per_stage(
    name: str, value: float | Sequence[float], stages: int, unit: str = "stage"
) -> list[float]:
    """One time per stage (or virtual stage: `unit`) from one number or a sequence, checked."""
    if not hasattr(value, "__len__"):  # a single number (numpy scalars included)
        values = [float(value)] * stages  # type: ignore[arg-type]
    else:
        values = [float(v) for v in value]  # type: ignore[union-attr]
        if len(values) != stages:
            raise PlanError(
                f"{name} has {len(values)} entries for {stages} {unit}s; "
                f"give one per {unit} or a single number"
            )
    for k, v in enumerate(values):
        if not math.isfinite(v) or v < 0:
            raise PlanError(f"{name} time {v} of {unit} {k} is invalid; use a finite number >= 0")
    return values


def action_times(
    n: int,
    fwd: float | Sequence[float],
    bwd: float | Sequence[float],
    igrad: float | Sequence[float] | None,
    wgrad: float | Sequence[float] | None,
    unit: str = "stage",
) -> dict[str, list[float]]:
    """Each action kind's seconds on each of `n` units, checked (`per_stage`): I and W half a
    B each where not given."""
    b = per_stage("bwd", bwd, n, unit)
    half = [v / 2 for v in b]
    return {
        "F": per_stage("fwd", fwd, n, unit),
        "B": b,
        "I": half if igrad is None else per_stage("igrad", igrad, n, unit),
        "W": half if wgrad is None else per_stage("wgrad", wgrad, n, unit),
    }


def check_comm(comm: float) -> None:
    if not math.isfinite(comm) or comm < 0:
        raise PlanError(f"comm={comm} is invalid; use a finite number >= 0")


def simulate(
    schedule: Sequence[Sequence[Action]],
    fwd: float | Sequence[float],
    bwd: float | Sequence[float],
    comm: float = 0.0,
    igrad: float | Sequence[float] | None = None,
    wgrad: float | Sequence[float] | None = None,
) -> Timeline:
    """Run `schedule` with per-stage forward/backward times and a stage-to-stage `comm` delay.

    F(k, m) starts once F(k-1, m) ended plus `comm`; B(k, m) (or I(k, m)) once the B or I of
    (k+1, m) ended plus `comm`; on the last stage once F(K-1, m) ended; W(k, m) once I(k, m)
    ended. I and W take `igrad` and `wgrad` (default: half of `bwd` each). Each stage runs its
    list strictly in order, one action at a time, each as early as allowed. Raises PlanError if
    the schedule deadlocks or repeats an action on a stage.
    """
    stages = len(schedule)
    if stages < 1:
        raise PlanError("schedule has 0 stages; give at least one action list")
    times = action_times(stages, fwd, bwd, igrad, wgrad)
    check_comm(comm)
    for k, actions in enumerate(schedule):
        seen: set[Action] = set()
        for action in actions:
            if action in seen:
                raise PlanError(f"stage {k} runs {action} twice; each action must appear once")
            seen.add(action)

    rows = [[(a.kind, k, a.mb) for a in actions] for k, actions in enumerate(schedule)]
    split = {(k, a.mb) for k, actions in enumerate(schedule) for a in actions if a.kind == "I"}

    def hop(a: int, b: int) -> float:
        return comm

    def dependency(key: Key) -> tuple[Key, float] | None:
        return waits_for(key, stages - 1, split, hop)

    ran, pos = sweep(rows, lambda key: times[key[0]][key[1]], dependency)
    events = [Event(k, schedule[k][i], start, end) for k, i, start, end in ran]
    stuck = []
    for k in range(stages):
        if pos[k] < len(schedule[k]):
            action = schedule[k][pos[k]]
            dep = dependency(rows[k][pos[k]])
            assert dep is not None  # only stage 0's forwards have no dependency, and never block
            (kind, dep_k, m), _ = dep
            dep_action = Action(kind, m)
            never = "" if dep_action in schedule[dep_k] else f", which stage {dep_k} never runs"
            stuck.append(
                f"schedule deadlocks: stage {k} is stuck at {action} "
                f"(step {pos[k]}), waiting for {dep_action} on stage {dep_k}{never}"
            )
    if stuck:  # name a missing action if that is the cause, else the first stuck stage
        raise PlanError(next((s for s in stuck if "never runs" in s), stuck[0]))

    return timeline(events, schedule)


def timeline(events: Sequence[Event], schedule: Sequence[Sequence[Action]]) -> Timeline:
    """The Timeline of `events` that ran `schedule` (one list a stage or device): events in
    start order, per-row busy time, makespan, bubble and peak in flight."""
    rows = len(schedule)
    ordered = tuple(sorted(events, key=lambda ev: (ev.start, ev.stage)))
    busy = tuple(
        math.fsum(ev.end - ev.start for ev in ordered if ev.stage == k) for k in range(rows)
    )
    makespan = max((ev.end for ev in ordered), default=0.0)
    bubble = 1.0 - math.fsum(busy) / (rows * makespan) if makespan > 0 else 0.0
    return Timeline(
        events=ordered,
        makespan=makespan,
        busy=busy,
        bubble=bubble,
        peak_in_flight=tuple(peak_in_flight(actions) for actions in schedule),
    )


# -- the zero-bubble schedules (pictures and rules: graphpart/plan/zero_bubble.py) --------------
def zb_h1(stages: int, microbatches: int) -> Schedule:
    """ZB-H1: at most K micro-batches in flight a stage (1F1B's peak), W filling bubbles."""
    return [list(a) for a in _listed(stages, microbatches, (stages,) * stages)]


def zb_h2(stages: int, microbatches: int) -> Schedule:
    """ZB-H2: up to 2K - 1 micro-batches in flight on a stage, for a smaller bubble."""
    return [list(a) for a in _listed(stages, microbatches, (2 * stages - 1,) * stages)]


# The times a zero-bubble schedule may meet, I and W over F (measured: W 0.65-0.9, I 1.0-1.3).
ROBUST_I = (0.8, 1.0, 1.2, 1.5)
ROBUST_W = (0.5, 0.6, 0.75, 0.9, 1.0, 1.2)
PLACED_W = (1.0, 0.9, 0.75, 0.5)  # the W/F ratios a schedule is placed at, tried in turn


@lru_cache(maxsize=256)
def _listed(
    stages: int, microbatches: int, limit: tuple[int, ...]
) -> tuple[tuple[Action, ...], ...]:
    """The zero-bubble schedule under `limit`, kept (the planner asks for the same often): of
    the orders list scheduling places at F = I = 1 and W = each of PLACED_W, the first whose
    simulated bubble is smallest on average over ROBUST_I x ROBUST_W (docs/schedules.md: an
    order placed for equal times idles wherever they differ). A stage's W's stay in order."""
    best: tuple[float, Schedule] | None = None
    for w in PLACED_W:
        sched = list_schedule(stages, microbatches, limit, wgrad=w)
        mean = sum(
            simulate(sched, 1.0, i + v, igrad=i, wgrad=v).bubble for i in ROBUST_I for v in ROBUST_W
        ) / (len(ROBUST_I) * len(ROBUST_W))
        if best is None or mean < best[0] - 1e-12:
            best = (mean, sched)
    assert best is not None
    return tuple(tuple(a) for a in best[1])


def list_schedule(
    stages: int,
    microbatches: int,
    limit: Sequence[int],
    fwd: float = 1.0,
    igrad: float = 1.0,
    wgrad: float = 1.0,
    comm: float = 0.0,
) -> Schedule:
    """Each stage's F, I and W of every micro-batch, placed by list scheduling: at each moment
    a stage runs, of the actions it may start earliest, an I first, then an F while fewer than
    `limit[k]` micro-batches hold activations on stage k (from F to W), then a W."""
    if stages < 1 or microbatches < 1:
        raise PlanError(f"stages={stages}, microbatches={microbatches}: use 1 or more of each")
    if len(limit) != stages or min(limit) < 1:
        raise PlanError(f"limit {list(limit)}: give one count of 1 or more per stage")
    K, M = stages, microbatches
    end: dict[tuple[int, str, int], float] = {}
    free = [0.0] * K
    nxt = [{"F": 0, "I": 0, "W": 0} for _ in range(K)]  # next micro-batch of each kind
    out: Schedule = [[] for _ in range(K)]
    cost = {"F": fwd, "I": igrad, "W": wgrad}

    def ready(k: int, kind: str) -> float | None:
        """When stage k could start its next `kind` action (None: not yet possible)."""
        m = nxt[k][kind]
        if m >= M:
            return None
        if kind == "F":
            if m - nxt[k]["W"] >= limit[k]:
                return None
            dep = 0.0 if k == 0 else end.get((k - 1, "F", m))
            delay = comm if k > 0 else 0.0
        elif kind == "I":
            dep = end.get((k, "F", m)) if k == K - 1 else end.get((k + 1, "I", m))
            delay = comm if k < K - 1 else 0.0
            if k < K - 1 and (k, "F", m) not in end:
                return None
        else:
            dep, delay = end.get((k, "I", m)), 0.0
        return None if dep is None else max(free[k], dep + delay)

    order = {"I": 0, "F": 1, "W": 2}
    for _ in range(3 * K * M):
        options = [
            (t, order[kind], k, kind)
            for k in range(K)
            for kind in ("I", "F", "W")
            if (t := ready(k, kind)) is not None
        ]
        if not options:
            raise PlanError(f"list scheduling stalled with limits {list(limit)}")
        t, _, k, kind = min(options)
        m = nxt[k][kind]
        end[(k, kind, m)] = free[k] = t + cost[kind]
        nxt[k][kind] += 1
        out[k].append(Action(kind, m))
    return out


GENERATORS: dict[str, Callable[[int, int], Schedule]] = {
    "gpipe": gpipe,
    "1f1b": one_f_one_b,
    "zb-h1": zb_h1,
    "zb-h2": zb_h2,
}
KINDS: tuple[str, ...] = tuple(GENERATORS)  # the names the config, the CLI and plan --auto take


def make(kind: str, stages: int, microbatches: int) -> Schedule:
    """Build the schedule named `kind` (one of KINDS)."""
    if kind not in GENERATORS:
        raise PlanError(f"schedule {kind!r} is unknown; use one of {', '.join(GENERATORS)}")
    _check(stages, microbatches)
    return GENERATORS[kind](stages, microbatches)
