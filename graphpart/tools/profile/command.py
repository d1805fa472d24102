"""`graphpart profile`: a few steps measured against the memory model; tables, PNGs, a trace."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from graphpart.engines import start_ray, stop_ray
from graphpart.errors import ConfigError
from graphpart.plan.kinds import is_virtual
from graphpart.plan.memory import predict_inference, training_vs_inference
from graphpart.plan.virtual_memory import chunk_memory
from graphpart.run.report import human_bytes
from graphpart.run.setup import predicted_memory, setup, uses_channels, uses_ray
from graphpart.tools.profile.compare import (
    compare,
    comparison_table,
    rss_table,
    traced_rows,
    traced_table,
)
from graphpart.tools.profile.measure import measure, step_batches
from graphpart.tools.profile.overhead import overhead
from graphpart.tools.profile.plots import plot_stage
from graphpart.tools.profile.trace import chrome_trace


def _written(outdir: Path) -> list[Path]:
    """What an earlier profile wrote into `outdir` (its stage plots and trace)."""
    if not outdir.is_dir():
        return []
    return sorted([*outdir.glob("memory_stage*.png"), *outdir.glob("trace.json")])


def check_out_folder(out: str | Path, force: bool = False) -> Path:
    """`out` as the folder profile writes into: an existing file (or a file where a folder of
    its path should be), a folder that cannot be written, and a folder an earlier profile
    wrote into (unless `force`) are one-line ConfigErrors."""
    outdir = Path(out)
    what = "profile writes a folder (memory_stage<k>.png, trace.json); give a folder path"
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(f"--out {outdir}: is an existing file; {what}")
    old = _written(outdir)
    if old and not force:
        raise ConfigError(
            f"--out {outdir}: holds an earlier profile ({', '.join(p.name for p in old[:3])}"
            + (", ..." if len(old) > 3 else "")
            + "); give a new folder, or --force to replace it"
        )
    for above in outdir.parents:
        if above.exists() or above == above.parent:
            if not above.is_dir():
                raise ConfigError(f"--out {outdir}: {above} is a file, not a folder; {what}")
            break
    else:  # pragma: no cover - parents always end at "." or the root
        above = Path(".")
    nearest = outdir if outdir.exists() else above
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {outdir}: cannot write into {nearest} (permission denied)")
    return outdir


def _layout(cfg: Any, stages: int, runtime: str) -> str:
    """What ran, in words: a pipeline, replicas of the whole model, or R replicas of a
    K-stage pipeline (2-D: worker "replica r, stage k" is stage k of replica r)."""
    p, B = cfg.pipeline, cfg.train.batch_size
    R = max(1, p.data_parallel)
    if R > 1 and stages > 1:
        share = -(-B // R)
        return (
            f"{R} replicas of a {stages}-stage pipeline, {R * stages} workers ({runtime}), "
            f"schedule {p.schedule}: batch {B} split across the replicas, <= {share} rows "
            f"each in {min(p.microbatches, share)} micro-batch(es); stage k of every replica "
            "all-reduces its gradients in a ring of its own"
        )
    if R > 1:
        return (
            f"{R} replica(s) of the whole model ({runtime}), data parallel: batch {B} split "
            "across them"
        )
    return (
        f"{stages} stage(s) ({runtime}), schedule {p.schedule}, batch {B} in "
        f"{p.microbatches} micro-batch(es)"
    )


def run_profile(
    cfg: Any,
    steps: int = 3,
    out: str | Path = "profile",
    inference: bool = False,
    as_json: bool = False,
    force: bool = False,
) -> int:
    """`graphpart profile`: a few steps; predicted vs measured memory per stage; PNGs, trace."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps={steps!r}: must be a positive integer")
    outdir = check_out_folder(out, force)
    s = setup(cfg)
    t, p = cfg.train, cfg.pipeline
    pred = predicted_memory(s)  # per stage, or per replica with pipeline.data_parallel
    if is_virtual(p.schedule):  # per worker: each virtual stage's own buffers (a device
        # holds the sum of its chunks': its process's row in the resident table)
        pred = replace(pred, stages=chunk_memory(s.plan, s.workload, channels=uses_channels(cfg)))
    batches = step_batches(s.dataset, t.batch_size, t.seed, steps)
    started = False
    if uses_ray(cfg):  # keep one Ray session for both measured runs
        started = start_ray(p.address)
    try:
        m = measure(s, steps, batches=batches)
        ovh = overhead(s, m, batches)
    finally:
        if started:
            stop_ray()
    cmp = compare(pred, m)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"--out {outdir}: cannot create the folder ({exc.strerror or exc})"
        ) from None
    for old in _written(outdir):  # --force: no stage plot of an earlier run is left beside
        old.unlink(missing_ok=True)
    pngs = []
    for k, events in enumerate(m.events):
        path = outdir / f"memory_stage{k}.png"
        st = pred.stages[k]
        plot_stage(events, k, path, st.bytes["activation"] // max(st.in_flight, 1), m.name(k))
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
        "traced": traced_rows(m),
        "overhead": ovh,
        "files": {"png": pngs, "trace": str(trace_path)},
    }
    if inference:
        inf = predict_inference(s.graph, t.batch_size, t.dtype)
        line = training_vs_inference(s.plan, s.workload)
        result["inference"] = {"predicted_bytes": inf, "line": line}
    if as_json:
        print(json.dumps(result))
        return 0
    head = (
        f"profile: {steps} step(s), {_layout(cfg, s.plan.k, m.runtime)}, {t.optimizer}, {t.dtype}"
        + (", recompute" if p.recompute else "")
    )
    print(head)
    print(comparison_table(cmp, pred))
    print()
    print(rss_table(m, pred))
    print()
    print(traced_table(result["traced"]))
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
