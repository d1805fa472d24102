"""Every schedule by name (pure): one stage a device (schedule.KINDS) or several, its chunks
(virtual_schedules.VIRTUAL), each as a placement of virtual stages and a chunked action list."""

from __future__ import annotations

from functools import lru_cache

from graphpart.errors import PlanError
from graphpart.plan import schedule as sch
from graphpart.plan.virtual import ChunkAction, Placement, interleaved_placement, lift
from graphpart.plan.virtual_schedules import VIRTUAL
from graphpart.plan.virtual_schedules import make as make_virtual

SCHEDULES: tuple[str, ...] = (*sch.KINDS, *VIRTUAL)  # what the config, the CLI and plan take
# chunks a device each schedule takes: a fixed count, or None (any v >= 1)
CHUNKS: dict[str, int | None] = {**dict.fromkeys(sch.KINDS, 1), "interleaved": None, "zbv": 2}
DEFAULT_CHUNKS = {"interleaved": 2}  # chunks = 0 (not given): the schedule's own, else CHUNKS


def is_virtual(kind: str) -> bool:
    """Whether `kind` holds several stages a device (needs a transport that runs them)."""
    return kind in VIRTUAL


def chunks_for(kind: str, chunks: int = 0) -> int:
    """The chunks a device `kind` runs with: `chunks`, checked, or (0: not given) its own:
    2 for interleaved and zbv, 1 for the others. A one-line PlanError names a bad value and
    what is valid."""
    if kind not in CHUNKS:
        raise PlanError(f"schedule {kind!r} is unknown; use one of {', '.join(SCHEDULES)}")
    fixed = CHUNKS[kind]
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 0:
        raise PlanError(f"chunks={chunks!r}: use 1 or more chunks a device")
    if chunks == 0:
        return DEFAULT_CHUNKS.get(kind, fixed or 1)
    if fixed is not None and chunks != fixed:
        which = "one stage a device" if fixed == 1 else f"{fixed} chunks a device"
        raise PlanError(
            f"chunks={chunks} with schedule {kind!r}, which runs {which}; use chunks={fixed}, or "
            f"schedule 'interleaved' (any chunks >= 1) or 'zbv' (2)"
        )
    return chunks


def check_layers(kind: str, devices: int, chunks: int, layers: int) -> None:
    """A one-line PlanError when `devices` x `chunks` virtual stages outnumber the layers."""
    v = chunks_for(kind, chunks)
    if devices * v > layers:
        raise PlanError(
            f"schedule {kind!r} with {devices} stages x {v} chunks needs {devices * v} virtual "
            f"stages, more than the model's {layers} layers; use at most {layers // v or 1} "
            f"stages with {v} chunks (or fewer chunks, or more layers)"
        )


@lru_cache(maxsize=256)
def make(
    kind: str, devices: int, chunks: int, microbatches: int
) -> tuple[Placement, tuple[tuple[ChunkAction, ...], ...]]:
    """The schedule `kind` on `devices` devices with `chunks` (0: its own) chunks each, and its
    placement: a one-stage-a-device schedule is chunk 0 of an identity placement."""
    v = chunks_for(kind, chunks)
    if is_virtual(kind):
        where, acts = make_virtual(kind, devices, v, microbatches)
    else:
        where, acts = interleaved_placement(devices, 1), lift(sch.make(kind, devices, microbatches))
    return where, tuple(tuple(a) for a in acts)
