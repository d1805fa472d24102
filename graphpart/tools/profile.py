"""Memory profiling: predicted vs measured per stage, resident memory, timelines, Chrome trace."""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graphpart.run import data as gdata
from graphpart.errors import ConfigError
from graphpart.plan.memory import CATEGORIES, MemoryPrediction, predict, predict_inference
from graphpart.run.report import human_bytes, table
from workers.hwm import read_hwm, reset_hwm

COLORS = {
    "parameter": "#4c72b0",
    "gradient": "#dd8452",
    "optimizer": "#55a868",
    "activation": "#c44e52",
    "boundary": "#8172b3",
    "workspace": "#937860",
}


# -- resident memory ----------------------------------------------------------------------------
class RssSampler:
    """Resident set size of some processes: peak and a time series, from this process.

    The peak is the kernel's high-water mark (Linux /proc/PID/status VmHWM, reset through
    /proc/PID/clear_refs when sampling starts), so short-lived temporaries count too; where
    that is not available it is the largest of the samples a background thread takes every
    `interval` seconds (which also make the time series).
    """

    def __init__(self, pids: Sequence[int], interval: float = 0.005) -> None:
        import psutil

        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.interval = interval
        self.peak = dict.fromkeys(self.procs, 0)
        self.hwm = dict.fromkeys(self.procs, False)  # peak from the kernel's high-water mark
        self.samples: dict[int, list[tuple[float, int]]] = {pid: [] for pid in self.procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[int, int]:
        now = time.perf_counter()
        out = {}
        for pid, p in self.procs.items():
            try:
                rss = p.memory_info().rss
            except Exception:  # noqa: BLE001 - the process went away
                continue
            out[pid] = rss
            self.peak[pid] = max(self.peak[pid], rss)
            self.samples[pid].append((now, rss))
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        for pid in self.procs:
            self.hwm[pid] = reset_hwm(pid)
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()
        for pid in self.procs:
            if self.hwm[pid]:
                hwm = read_hwm(pid)
                if hwm is None:
                    self.hwm[pid] = False
                else:
                    self.peak[pid] = max(self.peak[pid], hwm)


# -- measuring a run ----------------------------------------------------------------------------
@dataclass
class Measurement:
    """What a profiled run measured, per stage, plus resident memory per process."""

    runtime: str  # "local" (one process) or "ray" (one actor process per stage)
    stats: list[dict]  # StageWorker.stats() per stage (memory = the ledger snapshot)
    events: list[list]  # the ledger events per stage
    offsets: list[float]  # seconds to add to stage k's event times to put them on one clock
    aligned: bool  # True if offsets are exact (one process), False if each stage keeps its own
    step_s: list[float]  # wall time of each step
    rss: list[dict] = field(default_factory=list)  # per process: pid, stages, baseline, peak
    rss_samples: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    t0: float = 0.0  # the driver clock value of offset 0 (local runs)


def _batches(ds: gdata.Dataset, batch: int, seed: int, steps: int) -> list[np.ndarray]:
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
    from graphpart.engines.engine import LocalEngine
    from graphpart.ir import mlp
    from graphpart.params import init_params
    from graphpart.plan.partition import partition

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
        e = LocalEngine(
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


def measure(
    s: Any,
    steps: int = 3,
    *,
    keep_events: bool = True,
    sample_rss: bool = True,
    batches: list[np.ndarray] | None = None,
) -> Measurement:
    """Run `steps` training steps of setup `s` (graphpart.run.train.setup) and collect measurements.

    Ray is used as graphpart.run.train.make_engine decides (stages > 1). Resident memory: for the
    in-process engine, this process, baseline taken after a JIT warm-up and before the engine
    allocates anything; for Ray, each stage worker measures its own process (baseline after
    its JIT warm-up and before it allocates anything, peak sampled at every forward, backward
    and step), so it works on any node.
    """
    from graphpart.params import Init
    from graphpart.run.train import make_engine, uses_ray

    cfg = s.config
    t = cfg.train
    batches = batches if batches is not None else _batches(s.dataset, t.batch_size, t.seed, steps)
    params = Init(t.seed, t.dtype)  # as training does: each worker makes its own
    ray_run = uses_ray(cfg)
    sampler: RssSampler | None = None
    if sample_rss and not ray_run:
        _warm_up(s)
        sampler = RssSampler([os.getpid()]).__enter__()  # baseline: before the engine exists
    groups = {os.getpid(): list(range(s.plan.k))}
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
        events = engine.events() if keep_events else [[] for _ in range(s.plan.k)]
        workers = getattr(engine, "workers", None)
        if workers is not None:  # one process, one clock: exact alignment
            t0 = min(w.ledger.t0 for w in workers)
            offsets = [w.ledger.t0 - t0 for w in workers]
            aligned = True
        else:  # each actor's ledger counts from its own creation
            t0 = 0.0
            offsets = [0.0] * s.plan.k
            aligned = False
    finally:
        if sampler is not None and not sampler._stop.is_set():
            sampler.__exit__()
        if engine is not None:
            engine.close()
    rss_rows = []
    if ray_run and sample_rss:  # the workers' own figures
        for st in stats:
            r = st["rss"]
            rss_rows.append(
                {
                    "pid": st["pid"],
                    "stages": [st["stage"]],
                    "baseline": r["baseline"],
                    "peak": r["peak"],
                    "growth": r["peak"] - r["baseline"],
                    "peak_from": "worker " + r.get("peak_from", "samples"),
                }
            )
    if sampler is not None:
        for pid, stages in groups.items():
            samples = sampler.samples.get(pid)
            if samples:
                base = samples[0][1]
                rss_rows.append(
                    {
                        "pid": pid,
                        "stages": stages,
                        "baseline": int(base),
                        "peak": int(sampler.peak[pid]),
                        "growth": int(sampler.peak[pid] - base),
                        "peak_from": "VmHWM" if sampler.hwm[pid] else "samples",
                    }
                )
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
    )


def _typical(step_s: Sequence[float]) -> float:
    """Median step time, leaving out the first step (it allocates the lazy buffers)."""
    rest = list(step_s[1:]) or list(step_s)
    return statistics.median(rest)


def ledger_mark_cost(n: int = 20000) -> float:
    """Seconds one recorded ledger event costs over an unrecorded one (this process)."""
    from workers.ledger import Ledger

    def per_call(keep: bool) -> float:
        led = Ledger(keep_events=keep)
        t = time.perf_counter()
        for _ in range(n):
            led.mark("F", "0")
        return (time.perf_counter() - t) / n

    return max(0.0, min(per_call(True) for _ in range(3)) - min(per_call(False) for _ in range(3)))


def _ab_local(s: Any, batches: list[np.ndarray], rounds: int) -> tuple[float, float]:
    """Median step time of two in-process engines, events on and off, stepped alternately."""
    from graphpart.params import Init
    from graphpart.run.train import make_engine

    params = Init(s.config.train.seed, s.config.train.dtype)
    engines = [make_engine(s, params, keep_events=True), make_engine(s, params, keep_events=False)]
    times: list[list[float]] = [[], []]
    data = [(s.dataset.X_train[idx], s.dataset.y_train[idx]) for idx in batches]
    for e in engines:  # allocate the lazy buffers before timing
        e.step(*data[0])
    for r in range(rounds):
        x, y = data[r % len(data)]
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            t = time.perf_counter()
            engines[which].step(x, y)
            times[which].append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def overhead(s: Any, m: Measurement, batches: list[np.ndarray]) -> dict[str, Any]:
    """Measurement overhead: events on vs off (A/B), and estimates from per-call costs.

    In-process runs step an events-on and an events-off engine alternately (at least 10
    steps each); Ray runs repeat the steps on fresh actors with events off. The estimates:
    (events recorded per step on the busiest stage) x (cost of one recorded event), and the
    RSS sampler's duty cycle (one sample's cost / sampling interval), each as a fraction of a
    step; the A/B difference is noisy for steps of a few milliseconds.
    """
    if m.runtime == "local":
        on_s, off_s = _ab_local(s, batches, max(10, len(batches)))
    else:
        off = measure(s, len(batches), keep_events=False, sample_rss=False, batches=batches)
        on_s, off_s = _typical(m.step_s), _typical(off.step_s)
    per_event = ledger_mark_cost()
    steps_after_first = max(1, len(batches) - 1)
    per_step = []
    for ev in m.events:
        first = next((i for i, e in enumerate(ev) if e[1] == "step"), len(ev))
        rest = ev[first + 1 :] if len(batches) > 1 else ev
        per_step.append(len(rest) / steps_after_first)
    events_per_step = int(round(max(per_step, default=0)))
    sampler = RssSampler([os.getpid()])
    t = time.perf_counter()
    for _ in range(200):
        sampler.sample()
    sample_cost = (time.perf_counter() - t) / 200
    return {
        "step_s_on": on_s,
        "step_s_off": off_s,
        "ab_fraction": (on_s - off_s) / off_s if off_s > 0 else 0.0,
        "events_per_step": events_per_step,
        "event_cost_s": per_event,
        "estimate_fraction": events_per_step * per_event / on_s if on_s > 0 else 0.0,
        "rss_sample_s": sample_cost,
        "rss_interval_s": sampler.interval,
        "rss_duty_fraction": sample_cost / sampler.interval,
    }


# -- comparing ----------------------------------------------------------------------------------
def compare(pred: MemoryPrediction, m: Measurement) -> list[dict[str, Any]]:
    """Per stage and category: predicted and measured peak bytes and their ratio."""
    out = []
    for sp, st in zip(pred.stages, m.stats, strict=True):
        peak = st["memory"]["peak"]
        rows = {}
        for c in (*CATEGORIES, "total"):
            p = sp.total if c == "total" else sp.bytes[c]
            meas = st["memory"]["peak_total"] if c == "total" else peak[c]
            rows[c] = {
                "predicted": p,
                "measured": meas,
                "ratio": (meas / p) if p else (1.0 if meas == 0 else float("inf")),
            }
        out.append(
            {
                "stage": sp.index,
                "pid": st.get("pid"),
                "in_flight": sp.in_flight,
                "slots": st.get("slots"),
                "categories": rows,
            }
        )
    return out


def comparison_table(cmp: list[dict[str, Any]], pred: MemoryPrediction) -> str:
    lines = []
    for row, sp in zip(cmp, pred.stages, strict=True):
        lines.append(
            f"stage {row['stage']} (pid {row['pid']}): {sp.in_flight} micro-batch(es) "
            f"in flight predicted, {row['slots']} activation slot(s) measured, "
            f"{sp.rows} rows per micro-batch"
        )
        body = []
        for c, v in row["categories"].items():
            body.append(
                [
                    c,
                    human_bytes(v["predicted"]),
                    human_bytes(v["measured"]),
                    f"{v['ratio']:.3f}" if v["predicted"] else "-",
                ]
            )
        lines.append(table(["category", "predicted", "measured peak", "ratio"], body))
        lines.append("")
    return "\n".join(lines).rstrip()


def rss_table(m: Measurement, pred: MemoryPrediction) -> str:
    """Resident memory per process against the bytes the model says it allocates after baseline."""
    if not m.rss:
        return "resident memory: not measured (actors on another node)"
    body = []
    for r in m.rss:
        expect = _expected_growth(m, pred, r["stages"])
        body.append(
            [
                r["pid"],
                ",".join(map(str, r["stages"])),
                human_bytes(r["baseline"]),
                human_bytes(r["peak"]),
                human_bytes(r["growth"]),
                human_bytes(expect),
                f"{r['growth'] / expect:.2f}" if expect else "-",
                r["peak_from"],
            ]
        )
    note = (
        "baseline: this process after a JIT warm-up, before the engine allocated anything"
        if m.runtime == "local"
        else "baseline: each stage worker after its JIT warm-up, before it allocated anything"
    )
    headers = ["pid", "stages", "baseline", "peak", "growth", "predicted", "ratio", "peak from"]
    return "resident memory (psutil RSS; " + note + ")\n" + table(headers, body)


def _expected_growth(m: Measurement, pred: MemoryPrediction, stages: Sequence[int]) -> int:
    return sum(pred.stages[k].total for k in stages)


# -- timelines ----------------------------------------------------------------------------------
def spans(events: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Forward and backward spans of one stage's ledger events: kind, mb, step, start, end."""
    out = []
    open_: dict[tuple[str, str], float] = {}
    step = 1
    for t, kind, detail, _ in events:
        if kind in ("F", "B"):
            open_[kind, detail] = t
        elif kind in ("F_end", "B_end"):
            k = kind[0]
            start = open_.pop((k, detail), None)
            if start is not None:
                out.append({"kind": k, "mb": int(detail), "step": step, "start": start, "end": t})
        elif kind == "step":
            step += 1
    return out


def chrome_trace(m: Measurement, pred: MemoryPrediction | None = None) -> dict[str, Any]:
    """Chrome trace events: per stage (pid = stage) F/B spans ("X") and memory counters ("C")."""
    ev: list[dict[str, Any]] = []
    us = 1e6
    for k, events in enumerate(m.events):
        off = m.offsets[k]
        ev.append(
            {"name": "process_name", "ph": "M", "pid": k, "tid": 0, "args": {"name": f"stage {k}"}}
        )
        ev.append(
            {"name": "thread_name", "ph": "M", "pid": k, "tid": 0, "args": {"name": "compute"}}
        )
        for sp in spans(events):
            ev.append(
                {
                    "name": f"{sp['kind']}{sp['mb']}",
                    "cat": "forward" if sp["kind"] == "F" else "backward",
                    "ph": "X",
                    "ts": (sp["start"] + off) * us,
                    "dur": (sp["end"] - sp["start"]) * us,
                    "pid": k,
                    "tid": 0,
                    "args": {"micro_batch": sp["mb"], "step": sp["step"]},
                }
            )
        slot = 0
        if pred is not None and pred.stages[k].in_flight:
            slot = pred.stages[k].bytes["activation"] // pred.stages[k].in_flight
        live = 0
        for t, kind, detail, by in events:
            ts = (t + off) * us
            ev.append(
                {
                    "name": "memory (bytes)",
                    "ph": "C",
                    "ts": ts,
                    "pid": k,
                    "args": dict(zip(CATEGORIES, by, strict=True)),
                }
            )
            if kind in ("F", "B_end") and detail != "-1":
                live += 1 if kind == "F" else -1
                ev.append(
                    {
                        "name": "activations in use (bytes)",
                        "ph": "C",
                        "ts": ts,
                        "pid": k,
                        "args": {"in use": live * slot},
                    }
                )
            if kind == "step":
                ev.append(
                    {"name": f"step {detail}", "ph": "i", "s": "p", "ts": ts, "pid": k, "tid": 0}
                )
    if m.runtime == "local":
        for pid, samples in m.rss_samples.items():
            for t, r in samples:
                ev.append(
                    {
                        "name": f"process RSS (pid {pid}, bytes)",
                        "ph": "C",
                        "ts": (t - m.t0) * us,
                        "pid": len(m.events),
                        "args": {"rss": r},
                    }
                )
        if m.rss_samples:
            ev.append(
                {
                    "name": "process_name",
                    "ph": "M",
                    "pid": len(m.events),
                    "tid": 0,
                    "args": {"name": "process"},
                }
            )
    note = (
        "one process: stage clocks aligned exactly"
        if m.aligned
        else "one actor per stage: each stage's times count from its own ledger's creation"
    )
    return {"traceEvents": ev, "displayTimeUnit": "ms", "otherData": {"alignment": note}}


def _split_first_step(events: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Events of the first step (allocations happen there) and of the later steps."""
    cut = next((i + 1 for i, e in enumerate(events) if e[1] == "step"), len(events))
    parts = [list(events[:cut]), list(events[cut:])]
    return [p for p in parts if p]


def _draw_memory(ax: Any, gantt: Any, events: Sequence[Sequence[Any]], slot_bytes: int) -> None:
    t = np.array([e[0] for e in events]) * 1e3
    by = np.array([e[3] for e in events], dtype=float) / 2**20
    t = np.append(t, t[-1])
    by = np.vstack([by, by[-1]])
    lower = np.zeros(len(t))
    for i, c in enumerate(CATEGORIES):
        upper = lower + by[:, i]
        ax.fill_between(t, lower, upper, step="post", color=COLORS[c], label=c, lw=0)
        lower = upper
    if slot_bytes:  # how much of the activation band holds a micro-batch right now
        act = CATEGORIES.index("activation")
        live, xs, ys = 0, [], []
        for e in events:
            if e[1] in ("F", "B_end") and e[2] != "-1":
                live += 1 if e[1] == "F" else -1
                xs.append(e[0] * 1e3)
                ys.append((sum(e[3][:act]) + live * slot_bytes) / 2**20)
        if xs:
            xs.append(t[-1])
            ys.append(ys[-1])
            ax.step(
                xs,
                ys,
                where="post",
                color="black",
                lw=1,
                ls="--",
                label="top of activations in use",
            )
    for e in events:
        if e[1] == "step":
            ax.axvline(e[0] * 1e3, color="grey", lw=0.8, ls=":")
    sp = spans(events)
    width = max(t[-1] - t[0], 1e-9)
    for s in sp:
        y = 1 if s["kind"] == "F" else 0
        color = "#4c72b0" if s["kind"] == "F" else "#c44e52"
        start, dur = s["start"] * 1e3, (s["end"] - s["start"]) * 1e3
        gantt.broken_barh([(start, dur)], (y, 0.8), color=color)
        if dur > 0.02 * width:
            gantt.text(
                start + dur / 2,
                y + 0.4,
                str(s["mb"]),
                ha="center",
                va="center",
                fontsize=6,
                color="white",
            )
    gantt.set_yticks([0.4, 1.4], ["B", "F"])
    gantt.set_ylim(0, 2)


def plot_stage(
    events: Sequence[Sequence[Any]], k: int, path: str | Path, slot_bytes: int = 0
) -> None:
    """PNG of stage k's memory over time, stacked by category, with F/B spans underneath.

    Two panels side by side when there are several steps: the first step (where the buffers
    are allocated, and where a fresh process also compiles its kernels) and the later ones.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = _split_first_step(events) or [[]]
    fig, axes = plt.subplots(
        2,
        len(parts),
        figsize=(11, 5.5),
        squeeze=False,
        sharey="row",
        gridspec_kw={"height_ratios": [4, 1], "width_ratios": [1, 2][: len(parts)]},
    )
    for col, part in enumerate(parts):
        ax, gantt = axes[0][col], axes[1][col]
        if part:
            _draw_memory(ax, gantt, part, slot_bytes)
        gantt.set_xlabel("ms since the stage's ledger was created")
        ax.set_title(
            "first step (allocations)"
            if col == 0 and len(parts) > 1
            else "later steps"
            if col
            else ""
        )
        gantt.sharex(ax)
    axes[0][0].set_ylabel("MiB held (ledger)")
    axes[0][0].legend(loc="upper left", fontsize=7, ncol=2)
    fig.suptitle(
        f"stage {k}: memory over time by category, forward (F) and backward (B) of each micro-batch"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command --------------------------------------------------------------------------------
def run_profile(
    cfg: Any,
    steps: int = 3,
    out: str | Path = "profile",
    inference: bool = False,
    as_json: bool = False,
) -> int:
    """`graphpart profile`: a few steps; predicted vs measured memory per stage; PNGs, trace."""
    from graphpart.plan.memory import training_vs_inference
    from graphpart.run.train import setup, uses_ray

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps={steps!r}: must be a positive integer")
    s = setup(cfg)
    t, p = cfg.train, cfg.pipeline
    kw = dict(
        batch=t.batch_size,
        microbatches=p.microbatches,
        schedule=p.schedule,
        optimizer=s.optimizer,
        dtype=t.dtype,
        recompute=p.recompute,
    )
    pred = predict(s.plan, **kw)
    batches = _batches(s.dataset, t.batch_size, t.seed, steps)
    started = False
    if uses_ray(cfg):  # keep one Ray session for both measured runs
        from graphpart.engines.tasks import start_ray

        started = start_ray(p.address)
    try:
        m = measure(s, steps, batches=batches)
        ovh = overhead(s, m, batches)
    finally:
        if started:
            import ray

            ray.shutdown()
    cmp = compare(pred, m)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    pngs = []
    for k, events in enumerate(m.events):
        path = outdir / f"memory_stage{k}.png"
        st = pred.stages[k]
        plot_stage(events, k, path, st.bytes["activation"] // max(st.in_flight, 1))
        pngs.append(str(path))
    trace_path = outdir / "trace.json"
    trace_path.write_text(json.dumps(chrome_trace(m, pred)))
    result: dict[str, Any] = {
        "runtime": m.runtime,
        "steps": steps,
        "step_s": m.step_s,
        "prediction": pred.to_dict(),
        "comparison": cmp,
        "rss": m.rss,
        "overhead": ovh,
        "files": {"png": pngs, "trace": str(trace_path)},
    }
    if inference:
        inf = predict_inference(s.graph, t.batch_size, t.dtype)
        line = training_vs_inference(s.plan, momentum=t.momentum, **kw)
        result["inference"] = {"predicted_bytes": inf, "line": line}
    if as_json:
        print(json.dumps(result))
        return 0
    head = (
        f"profile: {steps} step(s), {p.stages} stage(s) ({m.runtime}), schedule {p.schedule}, "
        f"batch {t.batch_size} in {p.microbatches} micro-batch(es), {t.optimizer}, {t.dtype}"
        + (", recompute" if p.recompute else "")
    )
    print(head)
    print(comparison_table(cmp, pred))
    print()
    print(rss_table(m, pred))
    print()
    print(
        f"measurement overhead: ledger {ovh['events_per_step']} events/step x "
        f"{ovh['event_cost_s'] * 1e6:.2f} us = {ovh['estimate_fraction']:.2%} of a step; RSS "
        f"sampling {ovh['rss_sample_s'] * 1e6:.0f} us every {ovh['rss_interval_s'] * 1e3:.0f}"
        f" ms ({ovh['rss_duty_fraction']:.1%} of one core); A/B, "
        + (
            "alternate steps of two engines"
            if m.runtime == "local"
            else f"two separate runs of {steps} step(s) (mostly noise at this length)"
        )
        + f": {ovh['step_s_on'] * 1e3:.2f} ms a step with events, "
        f"{ovh['step_s_off'] * 1e3:.2f} ms without ({ovh['ab_fraction']:+.1%})"
    )
    if inference:
        inf_b = human_bytes(result["inference"]["predicted_bytes"])
        print(
            f"inference (batch {t.batch_size}): {inf_b}"
            " predicted (parameters + largest set of live activations)"
        )
        print(result["inference"]["line"])
    print(
        f"wrote {', '.join(pngs)}, {trace_path}"
        + ("" if m.aligned else " (stage clocks aligned by each stage's own start)"),
        file=sys.stderr,
    )
    return 0
