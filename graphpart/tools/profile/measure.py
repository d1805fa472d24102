"""Measuring a few training steps: each stage's ledger stats and events, step times, RSS."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphpart.engines import Engine, Rss, StageStats, by_process
from graphpart.errors import ConfigError
from graphpart.ir import mlp
from graphpart.params import Init, init_params
from graphpart.plan.partition import partition
from graphpart.run import data as gdata
from graphpart.run.setup import make_engine, uses_ray
from graphpart.tools.profile.sample import RssSampler
from graphpart.tools.profile.workers import worker_names


@dataclass
class Measurement:
    """What a profiled run measured, per stage, plus resident memory per process."""

    runtime: str  # "local" (one process) or "ray" (one actor process per stage)
    stats: list[StageStats]  # per stage (memory = the ledger snapshot)
    events: list[list]  # the ledger events per stage
    offsets: list[float]  # seconds to add to stage k's event times to put them on one clock
    aligned: bool  # True if offsets are exact (one process), False if each stage keeps its own
    step_s: list[float]  # wall time of each step
    rss: list[dict] = field(default_factory=list)  # per process: pid, stages, baseline, peak
    rss_samples: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    t0: float = 0.0  # the driver clock value of offset 0 (local runs)
    names: list[str] = field(default_factory=list)  # per worker: "stage 1", "replica 0, stage 1"

    def name(self, k: int) -> str:
        """Worker k's name ("stage k" where the run did not name its workers)."""
        return self.names[k] if k < len(self.names) else f"stage {k}"


def step_batches(ds: gdata.Dataset, batch: int, seed: int, steps: int) -> list[np.ndarray]:
    """Row indices of the first `steps` training batches, as training draws them (epochs on)."""
    n = len(ds.X_train)
    out: list[np.ndarray] = []
    epoch = 0
    while len(out) < steps:
        full = list(gdata.batches(n, batch, seed, epoch, drop_last=n >= batch))
        if not full:
            raise ConfigError(f"the training set has no rows to profile on (n={n})")
        out.extend(full)
        epoch += 1
    return out[:steps]


def _warm_up(s: Any) -> None:
    """Compile the CPU kernels this run will use on a tiny copy of the model (in this process).

    So that the resident-memory baseline taken afterwards does not count the JIT compiler.
    """
    cfg = s.config
    m, t, p = cfg.model, cfg.train, cfg.pipeline
    if p.device != "cpu":
        return
    q = s.graph.get_info("sizes")[-1]
    g = mlp(
        [3, 3, 3, q], activation=m.activation, bias=m.bias, loss=m.loss, weight_decay=m.weight_decay
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(t.dtype)
    y = (
        rng.integers(0, q, 4)
        if m.loss == "cross_entropy"
        else rng.standard_normal((4, q)).astype(t.dtype)
    )
    for k in (1, 2):
        e = Engine(
            partition(g, k, "uniform"),
            init_params(g, 0, t.dtype),
            s.optimizer,
            microbatches=2,
            schedule=p.schedule,
            max_rows=4,
            recompute=p.recompute,
            keep_events=False,
        )
        e.step(x, y)
        e.predict(x)


def _process_row(pid: int, workers: list[int], stats: Sequence[StageStats]) -> dict[str, Any]:
    """The resident row of the workers process `pid` runs (one stage; a device's virtual
    stages; every stage in process), from the workers' own figures (Rss.of_process): the
    baseline after the first worker's warm-up (so the BLAS library's buffers at the stages'
    shapes are in it, in process too, as in a Ray worker's), the peak the kernel's high-water
    mark (each worker resets it at its baseline, with the earlier ones' arrays resident)."""
    r = Rss.of_process([st.rss for st in stats])
    return {
        "pid": pid,
        "stages": workers,
        "baseline": int(r.baseline),
        "peak": int(r.peak),
        "growth": int(r.growth),
        "peak_from": r.peak_from,
        "parts_growth": {
            k: r.parts_now[k] - r.parts_baseline[k] for k in r.parts_now if k in r.parts_baseline
        },
    }


def measure(
    s: Any,
    steps: int = 3,
    *,
    keep_events: bool = True,
    sample_rss: bool = True,
    batches: list[np.ndarray] | None = None,
) -> Measurement:
    """Run `steps` training steps of setup `s` (graphpart.run.setup.setup) and collect measurements.

    Ray is used as graphpart.run.setup.make_engine decides (stages > 1). Resident memory: for the
    in-process engine, this process, baseline taken after a JIT warm-up and before the engine
    allocates anything; for Ray, each stage worker measures its own process (baseline after
    its JIT warm-up and before it allocates anything, peak sampled at every forward, backward
    and step), so it works on any node.
    """
    cfg = s.config
    t = cfg.train
    batches = (
        batches if batches is not None else step_batches(s.dataset, t.batch_size, t.seed, steps)
    )
    params = Init(t.seed, t.dtype)  # as training does: each worker makes its own
    ray_run = uses_ray(cfg)
    sampler: RssSampler | None = None
    if sample_rss and not ray_run:
        _warm_up(s)
        # garbage this process left before (cycles of large arrays) freed now, not during
        # the run, where it would cut the growth measured from the workers' baselines
        gc.collect()
        sampler = RssSampler([os.getpid()]).__enter__()  # baseline: before the engine exists
    replicas = max(1, cfg.pipeline.data_parallel)
    workers = s.plan.k * replicas  # stages, replicas, or R replicas of K stages (2-D)
    engine = None
    step_s: list[float] = []
    try:
        engine = make_engine(s, params, keep_events=keep_events)
        for idx in batches:
            x, y = s.dataset.X_train[idx], s.dataset.y_train[idx]
            t1 = time.perf_counter()
            engine.step(x, y)
            step_s.append(time.perf_counter() - t1)
        if sampler is not None:
            sampler.__exit__()
        stats = engine.stats()
        events = engine.events() if keep_events else [[] for _ in range(workers)]
        local = getattr(engine.transport, "workers", None)
        if local is not None:  # one process, one clock: exact alignment
            t0 = min(w.ledger.t0 for w in local)
            offsets = [w.ledger.t0 - t0 for w in local]
            aligned = True
        else:  # each actor's ledger counts from its own creation
            t0 = 0.0
            offsets = [0.0] * workers
            aligned = False
    finally:
        if sampler is not None and not sampler.stopped:
            sampler.__exit__()
        if engine is not None:
            engine.close()
    rss_rows = []
    if ray_run and sample_rss:  # the workers' own figures, a row a process (a device's chunks)
        for pid, held in by_process(stats).items():
            row = _process_row(pid, [st.stage for st in held], held)
            rss_rows.append({**row, "peak_from": "worker " + row["peak_from"]})
    if sampler is not None:  # in process: the workers' figures of this one process
        rss_rows.append(_process_row(os.getpid(), list(range(workers)), stats))
    return Measurement(
        "ray" if ray_run else "local",
        stats,
        events,
        offsets,
        aligned,
        step_s,
        rss_rows,
        sampler.samples if sampler is not None else {},
        t0,
        worker_names(s.plan.k, replicas),
    )
