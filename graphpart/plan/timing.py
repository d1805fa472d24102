"""One step's time from per-stage action times, on a machine whose cores the devices may share."""

# The one time model behind `plan --auto` (graphpart.plan.auto: stage times from FLOPs at a
# measured rate) and `compare`'s projection (graphpart.tools.compare.project: stage times
# measured by the workers' busy clocks). Both feed it per-stage forward and backward seconds
# of one micro-batch, each stage's finish (the optimizer update after its last action) and a
# stage-to-stage hop; it returns the step and the simulator's timeline.
#
# Sharing cores. `capacity` is how many devices can compute at full speed at once: the cores
# of the machine over the cores (BLAS threads) one device's rate was measured with; None is a
# device of its own for every stage, the schedule simulator as it is. With fewer than K, the
# stages busy at one moment share the cores equally (processor sharing, as an OS scheduler
# does for CPU-bound processes): n busy stages each run at min(1, capacity / n) of their own
# rate, so a pipeline's fill and drain, where few stages work, run at full speed, and its
# steady state, where all K work, at capacity / K. A stage waiting for its input sleeps (the
# shm transport's channel does) and takes no share. Hops are not slowed: a copy's time is
# charged as measured. Busy clocks measured on a machine that shares its cores already hold the
# sharing: such times go in with capacity None.

from __future__ import annotations

from collections.abc import Sequence

from graphpart.errors import PlanError
from graphpart.plan import schedule as sch
from graphpart.plan.sweep import Key, waits_for

__all__ = ["capacity_of", "pipeline_step", "replicas_step"]

_EPS = 1e-12


def capacity_of(cores: int | None, threads: int = 1) -> float | None:
    """Devices that can compute at full speed at once on `cores` cores, each device's rate
    measured with `threads` threads (None: unknown, a core per device)."""
    if cores is None:
        return None
    if cores < 1 or threads < 1:
        raise PlanError(f"cores={cores}, threads={threads}: both must be positive")
    return cores / threads


def share(busy: int, capacity: float | None) -> float:
    """The fraction of its own rate each of `busy` devices gets: min(1, capacity / busy)."""
    if capacity is None or busy <= capacity:
        return 1.0
    return capacity / busy


def pipeline_step(
    kind: str,
    microbatches: int,
    fwd: Sequence[float],
    bwd: Sequence[float],
    finish: Sequence[float],
    hop_s: float,
    capacity: float | None = None,
    igrad: Sequence[float] | None = None,
    wgrad: Sequence[float] | None = None,
) -> tuple[float, sch.Timeline]:
    """Seconds of one step of a len(fwd)-stage `kind` schedule (K = 1: one device) and its
    timeline: stage k's forward and backward of one micro-batch take fwd[k] and bwd[k] on a
    device of its own (a split backward's I and W igrad[k] and wgrad[k]; None: half of bwd[k]
    each), every hop `hop_s`, and stage k's finish[k] follows its last action; the step ends
    when the last finish does. With `capacity` below K the busy stages share it (see the top
    of this module); otherwise this is graphpart.plan.schedule.simulate.
    """
    k = len(fwd)
    schedule = sch.make(kind, k, microbatches)
    fin = [float(f) for f in finish]
    if len(fin) != k:
        raise PlanError(f"finish has {len(fin)} entries for {k} stages; give one per stage")
    if capacity is None or capacity >= k:
        tl = sch.simulate(schedule, list(fwd), list(bwd), hop_s, igrad, wgrad)
        end = [0.0] * k
        for ev in tl.events:
            end[ev.stage] = max(end[ev.stage], ev.end)
        return max(e + f for e, f in zip(end, fin, strict=True)), tl
    return _shared(schedule, list(fwd), list(bwd), fin, hop_s, capacity, igrad, wgrad)


def _shared(
    schedule: sch.Schedule,
    fwd: list[float],
    bwd: list[float],
    fin: list[float],
    hop_s: float,
    capacity: float,
    igrad: Sequence[float] | None = None,
    wgrad: Sequence[float] | None = None,
) -> tuple[float, sch.Timeline]:
    """The simulator's rules with processor sharing: advance to the next end or arrival."""
    k = len(schedule)
    sch.simulate(schedule, fwd, bwd, hop_s, igrad, wgrad)  # validates inputs and the schedule
    times = sch.action_times(k, fwd, bwd, igrad, wgrad)
    split = {(s, a.mb) for s, acts in enumerate(schedule) for a in acts if a.kind == "I"}
    done: dict[Key, float] = {}
    pos = [0] * k
    job: list[list | None] = [None] * k  # [action or None (finish), work left, start]
    finished = [False] * k
    events: list[sch.Event] = []
    step = 0.0
    t = 0.0

    def hop(a: int, b: int) -> float:
        return hop_s

    def ready_at(s: int) -> float | None:
        """When stage s's next action may start (None: its input is not yet produced)."""
        action = schedule[s][pos[s]]
        dep = waits_for((action.kind, s, action.mb), k - 1, split, hop)
        if dep is None:
            return 0.0
        end = done.get(dep[0])
        return None if end is None else end + dep[1]

    while not all(finished):
        arrivals = []
        for s in range(k):  # start what may start now
            if job[s] is not None or finished[s]:
                continue
            if pos[s] == len(schedule[s]):
                job[s] = [None, fin[s], t]
                continue
            at = ready_at(s)
            if at is None:
                continue
            if at <= t + _EPS:
                action = schedule[s][pos[s]]
                job[s] = [action, times[action.kind][s], t]
            else:
                arrivals.append(at)
        running = [s for s in range(k) if job[s] is not None]
        if not running and not arrivals:  # the validation above rules this out
            raise PlanError("schedule deadlocks under core sharing")
        rate = share(len(running), capacity)
        dt = min([job[s][1] / rate for s in running] + [a - t for a in arrivals])  # type: ignore[index]
        dt = max(dt, 0.0)
        t += dt
        for s in running:
            j = job[s]
            assert j is not None
            j[1] -= dt * rate
            if j[1] > _EPS * max(1.0, t):
                continue
            action, start = j[0], j[2]
            job[s] = None
            if action is None:
                finished[s] = True
                step = max(step, t)
                continue
            done[action.kind, s, action.mb] = t
            events.append(sch.Event(s, action, start, t))
            pos[s] += 1

    return step, sch.timeline(events, schedule)


def replicas_step(
    compute_s: float,
    allreduce_s: float,
    finish_s: float,
    replicas: int,
    capacity: float | None = None,
) -> float:
    """Seconds of one data-parallel step: each replica computes its rows (`compute_s` on a
    device of its own), all-reduces the gradients (`allreduce_s`, transfers: not slowed) and
    updates (`finish_s`). All replicas compute at once, so on `capacity` below `replicas` the
    compute and the update run at capacity / replicas of their rate."""
    rate = share(replicas, capacity)
    return (compute_s + finish_s) / rate + allreduce_s
