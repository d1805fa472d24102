"""`graphpart compare`: every way to train one model on K devices, run side by side."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from graphpart.engines import start_ray, stop_ray
from graphpart.errors import ConfigError
from graphpart.plan.partition import partition
from graphpart.run.config import Config
from graphpart.run.setup import budget_of, setup, uses_ray
from graphpart.tools.compare.auto import search_config
from graphpart.tools.compare.conclude import conclusion
from graphpart.tools.compare.grid import KEY as GRID_KEY
from graphpart.tools.compare.grid import auto_grid_shape
from graphpart.tools.compare.project import hop_seconds, project
from graphpart.tools.compare.report import terminal, write_report
from graphpart.tools.compare.results import Comparison
from graphpart.tools.compare.runner import run_strategy, strategy_config
from graphpart.tools.compare.strategies import (
    Strategy,
    auto_strategy,
    grid_strategy,
    make_strategies,
)
from graphpart.tools.compare.verdict import comparison_verdict


def _report_dir(cfg: Config, report: str | None) -> Path:
    if report:
        out = Path(report)
        if (out / "compare.json").exists() or (out / "runs").exists():
            raise ConfigError(
                f"--report {report}: that folder already holds a comparison; give a new folder "
                "(nothing in it is overwritten)"
            )
        return out
    return Path(cfg.run.dir) / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"


def run_compare(
    cfg: Config,
    *,
    devices: int = 2,
    microbatches: int | None = None,
    lr_rule: str = "linear",
    target: float | None = None,
    report: str | None = None,
    auto: bool = False,
    as_json: bool = False,
    log: Callable[[str], None] | None = None,
) -> int:
    """Run strategies a-g, h (2-D, from 4 devices: by `grid.grid_shape`'s rule, or with
    `auto` plan --auto's best 2-D setup) and plan --auto's pick; print the table or JSON,
    write the report.

    Returns the exit status: 0, or 130 after Ctrl-C (the report then holds what finished).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    s = setup(cfg)
    budget = budget_of(cfg)
    K = int(devices)
    M = int(microbatches or 0) or min(2 * K, cfg.train.batch_size)
    strategies = make_strategies(cfg, K, M, lr_rule, n_layers=len(s.graph.layers))
    out = _report_dir(cfg, report)
    cores = os.cpu_count() or 1
    threads = max(1, cores // K)
    # the hop the projection charges: the widest boundary tensor of a K-stage split
    width = max(st.output_width for st in partition(s.graph, K).stages if st.output)
    rows = -(-cfg.train.batch_size // M)
    hop = hop_seconds(rows * width * np.dtype(cfg.train.dtype).itemsize)
    c = Comparison(cfg, K, M, lr_rule, budget, threads, cores, hop)
    if auto:
        log("plan --auto: measuring this machine's rates and searching ...")
        c.auto, _ = search_config(s.graph, cfg, K, threads)
        shape = auto_grid_shape(c.auto)
        if shape is not None:  # h: plan --auto's best 2-D setup instead of the fixed rule's
            strategies = [st for st in strategies if st.key != GRID_KEY]
            strategies.append(grid_strategy(cfg, shape))
        # the best fitting setup of one stage a device: compare's projection simulates those
        best = next((x for x in c.auto if x.fits and x.chunks == 1), None)
        if best is not None:
            c.auto_pick = best
            strategies.append(_auto(cfg, best))
    runs = out / "runs"
    started = False
    if any(uses_ray(strategy_config(cfg, st, runs)) for st in strategies):
        log("starting Ray ...")
        started = start_ray(cfg.pipeline.address)
    try:
        for i, st in enumerate(strategies):
            log(f"[{i + 1}/{len(strategies)}] {st.label}: {st.title}")
            o = run_strategy(cfg, st, run_dir=runs, budget=budget, threads=threads, log=log)
            c.outcomes.append(o)
            if o.status == "does not fit":
                log(f"  {st.label}: not run, {o.problem}")
            elif o.status == "failed":
                log(f"  {st.label}: failed: {o.problem}")
            if o.status == "interrupted":
                c.interrupted = True
                break
    except KeyboardInterrupt:
        c.interrupted = True
    finally:
        if started:
            stop_ray()
    c.projections = {o.strategy.key: project(o, hop) for o in c.outcomes}
    c.choose_target(target)
    lines = conclusion(c, s.shape.n_features, s.shape.n_outputs)
    answer = comparison_verdict(c)
    path = write_report(c, lines, out, answer)
    if as_json:
        print(
            json.dumps(
                {
                    **c.to_dict(),
                    "verdict": asdict(answer),
                    "conclusion": lines,
                    "report": str(path),
                }
            )
        )
    else:
        print(terminal(c, lines, answer))
        print(f"\nreport: {path}")
    return 130 if c.interrupted else 0


def _auto(cfg: Config, best: object) -> Strategy:
    overrides = dict(best.config())  # type: ignore[attr-defined]
    if overrides.get("pipeline.stages", 1) > 1 or overrides.get("pipeline.data_parallel", 1) > 1:
        overrides.setdefault("pipeline.transport", cfg.pipeline.transport)
    else:
        overrides["pipeline.transport"] = "inprocess"
    title = ", ".join(
        f"{k.split('.')[1]}={v}" for k, v in overrides.items() if k != "pipeline.transport"
    )
    return auto_strategy(overrides, title, int(best.devices))  # type: ignore[attr-defined]
