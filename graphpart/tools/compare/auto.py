"""`graphpart plan --auto`: measure this machine's rates, search the setups, print the best."""

from __future__ import annotations

import json
import os

from graphpart.ir import Graph
from graphpart.plan.auto import Rates, search, table, to_dict
from graphpart.run.config import Config
from graphpart.run.train import budget_of, setup
from graphpart.tools.compare.rates import measure_rates
from graphpart.units import human_bytes


def search_config(graph: Graph, cfg: Config, devices: int, threads: int) -> tuple[list, Rates]:
    """plan --auto's candidates for `cfg`'s training settings, with rates measured here."""
    t = cfg.train
    rates = measure_rates(threads, t.dtype)
    found = search(
        graph,
        devices=devices,
        budget=budget_of(cfg),
        batch=t.batch_size,
        optimizer=t.optimizer,
        momentum=t.momentum,
        dtype=t.dtype,
        rates=rates,
    )
    return found, rates


def run_auto(cfg: Config, *, devices: int, as_json: bool = False, limit: int = 10) -> int:
    s = setup(cfg)
    t = cfg.train
    budget = budget_of(cfg)
    threads = max(1, (os.cpu_count() or 1) // max(1, devices))
    found, rates = search_config(s.graph, cfg, devices, threads)
    if as_json:
        print(
            json.dumps(
                {
                    "devices": devices,
                    "memory_budget": budget,
                    "rates": {
                        "flops_per_s": rates.flops_per_s,
                        "copy_bytes_per_s": rates.copy_bytes_per_s,
                        "hop_s": rates.hop_s,
                    },
                    "candidates": [to_dict(c) for c in found],
                }
            )
        )
        return 0
    fitting = [c for c in found if c.fits]
    print(
        f"plan --auto: {len(found)} setups considered for {devices} device(s), budget "
        f"{human_bytes(budget) if budget is not None else 'none'}, batch {t.batch_size}; "
        f"{len(fitting)} fit. Rates measured here: {rates.flops_per_s / 1e9:.1f} GFLOP/s per "
        f"device ({threads} core(s)), copy {rates.copy_bytes_per_s / 1e9:.1f} GB/s, hop "
        f"latency {rates.hop_s * 1e3:.3f} ms"
    )
    print(table(found, limit))
    if fitting:
        best = fitting[0]
        flags = " ".join(f"--set {k}={_toml(v)}" for k, v in best.config().items())
        print(f"\nbest: graphpart train {flags}")
    else:
        print("\nnothing fits the budget: raise --memory-budget, or lower --batch-size")
    return 0


def _toml(v: object) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)
