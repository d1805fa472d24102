"""The memory model of schedules with virtual stages: each chunk's buffers, each device's sum."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from graphpart.ir.graph import BATCH
from graphpart.plan.kinds import chunks_for, is_virtual
from graphpart.plan.kinds import make as make_schedule
from graphpart.plan.memory import channel_bytes, predict, stage_buffers
from graphpart.plan.prediction import Buffer, MemoryPrediction, StageMemory
from graphpart.plan.schedule import peak_in_flight
from graphpart.plan.stages import Plan
from graphpart.plan.virtual import Placement
from graphpart.plan.virtual_sim import chunk_peaks
from graphpart.plan.workload import Workload


def predict_schedule(plan: Plan, w: Workload, *, channels: bool = False) -> MemoryPrediction:
    """`memory.predict` for a schedule with one stage a device, `predict_virtual` (per
    device) for one with virtual stages (w.schedule interleaved or zbv, w.chunks a device)."""
    if is_virtual(w.schedule):
        return predict_virtual(plan, w, channels=channels)
    return predict(plan, w, channels=channels)


def chunk_memory(plan: Plan, w: Workload, *, channels: bool = False) -> tuple[StageMemory, ...]:
    """Per virtual stage s of `plan` (its V stages; devices V / chunks): the buffers its
    worker allocates, as `memory.stage_buffers` names them, with its chunk's own peaks in its
    device's list (`virtual_sim.chunk_peaks`: a worker allocates slots per chunk, not from a
    pool of the device's), and with `channels` (the `shm` transport) the channels of the
    boundaries it shares with another device (none at the V's turn) and, on stage 0, the
    driver's feed; the ledger's names and categories, by chunk."""
    v = chunks_for(w.schedule, w.chunks)
    where, actions = make_schedule(w.schedule, plan.k // v, v, w.microbatches)
    out = []
    for s, st in enumerate(plan.stages):
        d = where.owner[s]
        c = where.chunk(s)
        mine = [a for a in actions[d] if a.chunk == c]
        held, pending = chunk_peaks(actions[d], v)[c]
        bufs = stage_buffers(
            st.graph,
            output=st.output,
            input_grad=s > 0,
            rows=w.rows,
            in_flight=held,
            optimizer_slots=w.slots,
            dtype=w.dtype,
            recompute=w.recompute,
            pending=pending,
            whole=any(a.kind == "B" for a in mine),
        )
        if channels:
            bufs += _channels(plan, where, s, w)
        out.append(StageMemory(s, w.rows, held, tuple(bufs)))
    return tuple(out)


def predict_virtual(plan: Plan, w: Workload, *, channels: bool = False) -> MemoryPrediction:
    """Peak bytes per device and category of training `plan`'s V stages as w.schedule places
    them: device d holds its chunks' workers, so its peak is the sum of theirs
    (`chunk_memory`; every buffer is allocated once and kept); its buffers are named
    "s<stage>:<the chunk's ledger name>", its in-flight count is the most micro-batch-chunks
    it holds at once."""
    v = chunks_for(w.schedule, w.chunks)
    where, actions = make_schedule(w.schedule, plan.k // v, v, w.microbatches)
    chunks = chunk_memory(plan, w, channels=channels)
    devices = []
    for d in range(where.devices):
        bufs = tuple(
            replace(b, name=f"s{s}:{b.name}") for s in where.stages_of(d) for b in chunks[s].buffers
        )
        devices.append(StageMemory(d, w.rows, peak_in_flight(actions[d]), bufs))
    return MemoryPrediction(
        tuple(devices),
        int(w.batch),
        int(w.microbatches),
        w.schedule,
        w.optimizer_name,
        np.dtype(w.dtype).name,
        bool(w.recompute),
    )


def _channels(plan: Plan, where: Placement, s: int, w: Workload) -> tuple[Buffer, ...]:
    """Stage s's channel buffers on `shm` (as memory.channel_buffers names a stage's), for
    the boundaries that cross devices only."""
    size = np.dtype(w.dtype).itemsize

    def width(k: int) -> int:
        st = plan.stages[k]
        return int(np.prod([n for n in st.graph.var(st.output).shape if n != BATCH]))

    out, n_in = [], 0
    if s == 0:
        first = plan.stages[0].graph.inputs[0]
        wide = int(np.prod([n for n in first.shape if n != BATCH]))
        out.append(Buffer("channel:feed", "boundary", channel_bytes(wide, w.batch, size)))
    for k, side in ((s - 1, "prev"), (s, "next")):  # the output of stage k crosses
        if 0 <= k < plan.k - 1 and where.owner[k] != where.owner[k + 1]:
            nbytes = channel_bytes(width(k), w.batch, size)
            out += [
                Buffer(f"channel:in{n_in}", "boundary", nbytes),
                Buffer(f"channel:to_{side}", "boundary", nbytes),
            ]
            n_in += 1
    return tuple(out)
