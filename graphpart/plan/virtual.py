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
ChunkAction). This module holds the IR, the placements and the text form; `virtual_sim` the
simulator and the validator; `virtual_schedules` the generators (`interleaved_1f1b`, `zb_v`,
in VIRTUAL; graphpart/plan/kinds.py names them beside `schedule.KINDS`, and the executor runs
them: docs/schedules.md, "Running virtual stages").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from graphpart.errors import PlanError
from graphpart.plan.schedule import (
    Action,
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


def check_counts(devices: int, chunks: int, microbatches: int = 1) -> None:
    for name, n in (("devices", devices), ("chunks", chunks), ("microbatches", microbatches)):
        if n < 1:
            raise PlanError(f"{name}={n} is not positive; use 1 or more")


def interleaved_placement(devices: int, chunks: int) -> Placement:
    """Megatron's placement: device d holds virtual stages d, d+K, ..., d+(v-1)K."""
    check_counts(devices, chunks)
    return Placement("interleaved", tuple(s % devices for s in range(devices * chunks)))


def v_placement(devices: int) -> Placement:
    """ZB-V's placement (two chunks): device d holds virtual stages d and 2K-1-d."""
    check_counts(devices, 2)
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
