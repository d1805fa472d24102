"""Virtual-stage schedules timed and checked: the simulator over devices, its ASCII picture,
the validator, and the slots each chunk of a device needs (graphpart/plan/virtual.py: the IR)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from graphpart.errors import PlanError
from graphpart.plan.schedule import Event, Timeline, action_times, check_comm, timeline
from graphpart.plan.sweep import Key, sweep, waits_for
from graphpart.plan.virtual import (
    ChunkAction,
    Placement,
    format_action,
)


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
    times = action_times(V, fwd, bwd, igrad, wgrad, "virtual stage")
    check_comm(comm)
    held = [where.stages_of(d) for d in range(K)]
    rows: list[list[Key]] = []  # per device: (kind, virtual stage, mb)
    for d, acts in enumerate(schedule):
        seen: set[Key] = set()
        for a in acts:
            if not 0 <= a.chunk < len(held[d]):
                raise PlanError(
                    f"device {d} runs {format_action(d, a)}, but has chunks 0..{len(held[d]) - 1}"
                )
            k = (a.kind, held[d][a.chunk], a.mb)
            if k in seen:
                raise PlanError(f"device {d} runs {format_action(d, a)} twice")
            seen.add(k)
        rows.append([(a.kind, held[d][a.chunk], a.mb) for a in acts])
    split = {(s, m) for keys in rows for kind, s, m in keys if kind == "I"}
    planned = {k for keys in rows for k in keys}

    def dependency(key: Key) -> tuple[Key, float] | None:
        return waits_for(key, V - 1, split, _hop)

    def _hop(a: int, b_: int) -> float:
        return 0.0 if where.owner[a] == where.owner[b_] else comm

    ran, pos = sweep(rows, lambda k: times[k[0]][k[1]], dependency)
    events = [Event(d, schedule[d][i], start, end) for d, i, start, end in ran]
    stuck = []
    for d in range(K):
        if pos[d] < len(rows[d]):
            s = rows[d][pos[d]][1]
            dep = dependency(rows[d][pos[d]])
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

    return timeline(events, schedule)


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
