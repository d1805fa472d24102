"""The wiring of one training step: which stage runs which action, fed from where (pure).

Every transport runs the same wiring, so they all compute the same numbers in the same
per-stage order. The driver-side walk (`drive`) issues the actions through a transport's
`call`, in an order that respects every dependency; stage-side transports hand each stage
its own list (`StepWiring.stages`) and let the actions' `receives`/`sends` flags route the
tensors. For K=2, M=2, 1F1B:

    stage 0: F0(data -> send)  F1(data -> send)  B0(recv)        B1(recv)
    stage 1: F0(recv, labels)  B0(send)          F1(recv, labels) B1(send)

A zero-bubble schedule splits each B into I, routed as B is (its output is the cotangent the
previous stage waits for), and W, which neither receives nor sends (K=2, M=2, ZB-H1):

    stage 0: F0(data -> send)  F1(data -> send)  I0(recv)  W0  I1(recv)  W1
    stage 1: F0(recv, labels)  I0(send)  F1(recv, labels)  I1(send)  W0  W1

With virtual stages (graphpart/plan/kinds.py: interleaved, zbv) a worker is a device holding
v stages, its chunks: each action names its chunk and virtual stage, and a boundary between
two chunks of one device is `near` (in process); the driver addresses the virtual stages
(`call(stage, ...)` with stage 0..V-1), the devices' own lists are `stages`. K=2, v=2, ZB-V's
device 1 holds virtual stages 1 and 2, so F of stage 1 feeds F of stage 2 in process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from graphpart.plan import schedule as sch
from graphpart.plan.kinds import is_virtual
from graphpart.plan.kinds import make as make_schedule
from graphpart.plan.virtual import ChunkAction, Placement
from graphpart.plan.virtual_sim import simulate as simulate_virtual
from workers.actions import StageAction
from workers.walk import walk

H = TypeVar("H")  # what a transport's call returns: a value, an object reference, a DAG node


@dataclass(frozen=True)
class StepWiring:
    """One step's actions per stage (per device, with virtual stages), and an order to issue
    them from one driver."""

    schedule: str
    microbatches: int
    actions: tuple[tuple[sch.Action, ...], ...]  # the schedule, per stage (device)
    stages: tuple[tuple[StageAction, ...], ...]  # the same actions with their routing
    order: tuple[tuple[int, StageAction], ...]  # (stage or device, action), dependencies first
    peak_in_flight: tuple[int, ...]
    owner: tuple[int, ...] = ()  # virtual stage -> its device (); one stage a device: ()

    @property
    def k(self) -> int:
        """Stages the driver addresses (virtual stages: V = devices x chunks)."""
        return len(self.owner) or len(self.stages)

    @property
    def devices(self) -> int:
        """Workers that run a step's action lists (one a stage, or a device of chunks)."""
        return len(self.stages)

    @property
    def virtual(self) -> bool:
        return bool(self.owner)

    def held(self, device: int) -> tuple[int, ...]:
        """Device `device`'s virtual stages, chunk 0 first ((device,) without chunks)."""
        if not self.owner:
            return (device,)
        return tuple(s for s, d in enumerate(self.owner) if d == device)


@dataclass(frozen=True)
class StepFeed(Generic[H]):
    """What one step reads: micro-batch inputs and labels, the loss scale, whether to update."""

    xs: Sequence[H]
    ys: Sequence[H]
    scale: H
    update: H


def wire(schedule: str, stages: int, microbatches: int, chunks: int = 0) -> StepWiring:
    """The wiring of `schedule` (one of graphpart.plan.kinds.SCHEDULES) over `stages` stages
    (devices, with `chunks` virtual stages each: 0, the schedule's own) and M micro-batches.
    A B or I receives the next stage's cotangent (from its B or I) and sends its own to the
    previous stage; a W neither receives nor sends."""
    if is_virtual(schedule):
        return _wire_virtual(schedule, stages, int(microbatches), chunks)
    make_schedule(schedule, stages, chunks, microbatches)  # chunks checked: one a device
    actions = sch.make(schedule, stages, microbatches)
    last = stages - 1

    def routed(k: int, a: sch.Action) -> StageAction:
        if a.kind == "F":
            return StageAction("F", a.mb, receives=k > 0, sends=k < last, labels=k == last)
        if a.kind == "W":  # reads what its I kept: no neighbour either way
            return StageAction("W", a.mb, receives=False, sends=False)
        return StageAction(a.kind, a.mb, receives=k < last, sends=k > 0)  # B or I

    per_stage = tuple(tuple(routed(k, a) for a in acts) for k, acts in enumerate(actions))
    # a unit-time simulation starts each action after its dependencies: a topological order
    events = sorted(sch.simulate(actions, 1.0, 1.0).events, key=lambda e: (e.start, e.stage))
    order = tuple((e.stage, routed(e.stage, e.action)) for e in events)
    return StepWiring(
        schedule,
        int(microbatches),
        tuple(tuple(a) for a in actions),
        per_stage,
        order,
        tuple(sch.peak_in_flight(a) for a in actions),
    )


def route(where: Placement, device: int, a: ChunkAction, labels: bool = True) -> StageAction:
    """Device `device`'s action `a` with its routing: its virtual stage s, where its input
    comes from and its output goes (near: a chunk of the same device)."""
    s, last, owner = where.stage(device, a.chunk), where.stages - 1, where.owner
    if a.kind == "F":
        rec, snd = s > 0, s < last
        near_in, near_out = rec and owner[s - 1] == device, snd and owner[s + 1] == device
        lab = labels and s == last
    elif a.kind == "W":
        rec = snd = near_in = near_out = lab = False
    else:  # B or I
        rec, snd = s < last, s > 0
        near_in, near_out, lab = (
            rec and owner[s + 1] == device,
            snd and owner[s - 1] == device,
            False,
        )
    return StageAction(a.kind, a.mb, rec, snd, lab, a.chunk, s, near_in, near_out)


def _wire_virtual(kind: str, devices: int, microbatches: int, chunks: int) -> StepWiring:
    where, actions = make_schedule(kind, devices, chunks, microbatches)
    per_device = tuple(tuple(route(where, d, a) for a in acts) for d, acts in enumerate(actions))
    # a unit-time simulation starts each action after its dependencies: a topological order
    tl = simulate_virtual(actions, where, 1.0, 1.0)
    events = sorted(tl.events, key=lambda e: (e.start, e.stage))
    order = tuple((e.stage, route(where, e.stage, e.action)) for e in events)
    return StepWiring(
        kind, microbatches, actions, per_device, order, tl.peak_in_flight, where.owner
    )


def wire_inference(stages: int, microbatches: int, where: Placement | None = None) -> StepWiring:
    """Inference: every stage runs the micro-batches' forwards in order, each received from
    the previous stage and sent to the next; no labels, no backward (K=2, M=2):

        stage 0: F0(data -> send)  F1(data -> send)
        stage 1: F0(recv)          F1(recv)

    With a placement of virtual stages (`where`, one chunk a device or more: `stages` is then
    its devices; tensors keyed by virtual stage, as a virtual step's), each device
    runs its chunks' forwards chunk by chunk, each chunk's micro-batches in order.
    """
    if where is not None:
        m = int(microbatches)
        acts = tuple(
            tuple(ChunkAction("F", j, c) for c in range(where.chunks) for j in range(m))
            for _ in range(where.devices)
        )
        lists = tuple(
            tuple(route(where, d, a, labels=False) for a in row) for d, row in enumerate(acts)
        )
        order = tuple(
            (
                where.owner[s],
                route(where, where.owner[s], ChunkAction("F", j, where.chunk(s)), False),
            )
            for s in range(where.stages)
            for j in range(m)
        )
        return StepWiring("inference", m, acts, lists, order, (1,) * where.devices, where.owner)
    last, m = stages - 1, int(microbatches)
    acts = tuple(tuple(sch.Action("F", j) for j in range(m)) for _ in range(stages))
    per_stage = tuple(
        tuple(StageAction("F", j, receives=k > 0, sends=k < last) for j in range(m))
        for k in range(stages)
    )
    order = tuple((k, per_stage[k][j]) for j in range(m) for k in range(stages))
    return StepWiring("inference", m, acts, per_stage, order, (1,) * stages)


def drive_inference(w: StepWiring, xs: Sequence[H], call: Callable[..., H]) -> list[H]:
    """Issue an inference wiring's forwards through `call(stage, "infer", input)`; return the
    last stage's outputs, by micro-batch."""
    out: dict[tuple[int, int], H] = {}
    walk(
        w.order,
        lambda k, a, method, *args: call(_stage(k, a), method, *args),
        data=xs.__getitem__,
        take=lambda k, a: out.pop((_stage(k, a) - 1, a.mb)),
        give=lambda k, a, h: out.__setitem__((_stage(k, a), a.mb), h),
        infer=True,
    )
    return [out[(w.k - 1, j)] for j in range(w.microbatches)]


def drive(w: StepWiring, feed: StepFeed[H], call: Callable[..., H]) -> list[H]:
    """Issue every action of one step through `call(stage, method, *args)`, then each
    stage's `finish`; return what the step must wait on: the outputs nothing consumed (they
    carry any failure of a leaf action) followed by the K finish results.

    An action that receives takes its neighbour's output handle; the last stage's backward
    (B or I) takes its own forward's output (None: a dependency, not a value), so that every
    caller sees the same data dependencies. A W's output (None) is a leaf: the step waits on
    it like any other. With virtual stages `call` takes the virtual stage (0..V-1), and the V
    finishes are returned.
    """
    out: dict[str, dict[tuple[int, int], H]] = {"F": {}, "B": {}, "W": {}}

    def take(k: int, a: StageAction) -> H:
        s = _stage(k, a)
        if a.kind == "F":
            return out["F"].pop((s - 1, a.mb))
        return out["B"].pop((s + 1, a.mb)) if a.receives else out["F"].pop((s, a.mb))

    walk(
        w.order,
        lambda k, a, method, *args: call(_stage(k, a), method, *args),
        data=feed.xs.__getitem__,
        take=take,
        give=lambda k, a, h: out[a.carries or a.kind].__setitem__((_stage(k, a), a.mb), h),
        labels=feed.ys.__getitem__,
        scale=feed.scale,
    )
    done = [call(k, "finish", feed.update) for k in range(w.k)]
    return [*out["F"].values(), *out["B"].values(), *out["W"].values(), *done]


def _stage(k: int, a: StageAction) -> int:
    """The stage the driver calls for (k, a): its virtual stage, or the stage k itself."""
    return a.stage if a.stage >= 0 else k
