"""What each strategy would do with a device of its own per stage or replica: the schedule
simulator fed this run's measured stage times and a measured boundary hop."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np

from graphpart.engines import Channel, ChannelInbox, ChannelName, unlink_channel
from graphpart.plan import schedule as sch
from graphpart.plan import timing
from graphpart.tools.compare.runner import Outcome


@dataclass(frozen=True)
class Projection:
    """Step time and throughput on one device per stage/replica, and how it was obtained."""

    step_s: float
    samples_per_s: float
    bubble: float | None  # pipeline bubble fraction of the simulated step (None: no pipeline)
    basis: str  # "measured" (one device: nothing to project) or what the simulator was fed
    timeline: sch.Timeline | None = None


def hop_seconds(nbytes: int, repeats: int = 20) -> float:
    """Median time for one boundary tensor of `nbytes` to go through a shared-memory channel
    from one thread to another and be copied out (what a stage-to-stage hop costs the shm
    transport on one node, without Ray's share of the cores)."""
    cols = max(1, nbytes // 4)
    a = np.ones((1, cols), np.float32)
    name = ChannelName.new(f"hop-{uuid.uuid4().hex[:10]}", a.nbytes + 4096)
    reader = Channel.create(name)
    inbox = ChannelInbox([reader])
    writer = Channel.attach(name)
    own = np.empty_like(a)
    times: list[float] = []
    try:
        for i in range(repeats + 2):  # each a new step, so the writer reuses the buffer's pages
            t0 = time.perf_counter()
            th = threading.Thread(target=writer.send, args=((i, "F", 0), a))
            th.start()
            np.copyto(own, inbox.take((i, "F", 0), 10.0))
            if i >= 2:  # the first two touch fresh pages
                times.append(time.perf_counter() - t0)
            th.join()
    finally:
        writer.close()
        inbox.close()
        unlink_channel(name)
    return float(np.median(times))


def project(o: Outcome, hop_s: float) -> Projection | None:
    """The simulator's step for `o` with a device per stage/replica (None if it did not run)."""
    if not o.ran or not o.steps:
        return None
    p, t = o.config.pipeline, o.config.train
    steps, stats = o.steps, o.summary["stage_stats"]
    if p.data_parallel > 1 and p.stages > 1:
        return _project_grid(o, hop_s)
    if p.data_parallel > 1:
        # each replica computes its rows, then the ring: the slowest replica sets the step
        step = max(
            (x["forward_s"] + x["backward_s"] + x["finish_s"] + _waited(x)) / steps for x in stats
        )
        return Projection(
            step, t.batch_size / step, None, "measured replica compute + measured all-reduce"
        )
    if p.stages == 1:
        rate = o.summary["samples_per_s"]
        return Projection(t.batch_size / rate, rate, None, "measured (one device)")
    M = p.microbatches
    fwd = [x["forward_s"] / (steps * M) for x in stats]
    bwd = [x["backward_s"] / (steps * M) for x in stats]
    fin = [x["finish_s"] / steps for x in stats]
    step, tl = timing.pipeline_step(p.schedule, M, fwd, bwd, fin, hop_s)  # plan --auto's model
    return Projection(
        step,
        t.batch_size / step,
        tl.bubble,
        f"simulator: measured stage times + measured hop {hop_s * 1e3:.3f} ms",
        tl,
    )


def _project_grid(o: Outcome, hop_s: float) -> Projection:
    """R replicas of a K-stage pipeline, a device per worker: each replica's pipeline
    simulated from its own workers' measured times, stage k's measured all-reduce after its
    last backward (before its update); the slowest replica sets the step."""
    p, t = o.config.pipeline, o.config.train
    steps, stats, K = o.steps, o.summary["stage_stats"], p.stages
    M = min(p.microbatches, -(-t.batch_size // p.data_parallel))
    best: tuple[float, sch.Timeline] | None = None
    for r in range(p.data_parallel):
        mine = stats[r * K : (r + 1) * K]
        fwd = [x["forward_s"] / (steps * M) for x in mine]
        bwd = [x["backward_s"] / (steps * M) for x in mine]
        fin = [(x["finish_s"] + _waited(x)) / steps for x in mine]
        got = timing.pipeline_step(p.schedule, M, fwd, bwd, fin, hop_s)
        if best is None or got[0] > best[0]:
            best = got
    assert best is not None
    step, tl = best
    return Projection(
        step,
        t.batch_size / step,
        tl.bubble,
        "simulator: each replica's measured stage times + measured all-reduce + measured hop "
        f"{hop_s * 1e3:.3f} ms; the slowest replica",
        tl,
    )


def _waited(x: dict) -> float:
    """The all-reduce time a step waited for: the exposed part where the run reports it (the
    rest overlapped the backward), else all of it."""
    return x.get("allreduce_exposed_s", x["allreduce_s"])
