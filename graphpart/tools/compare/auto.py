"""`graphpart plan --auto`: measure this machine's rates, search the setups, print the best."""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

from graphpart.ir import Graph
from graphpart.plan.auto import TIE, Candidate, Rates, search, table, to_dict
from graphpart.run.config import Config
from graphpart.run.session import make_config
from graphpart.run.setup import budget_of, setup, workload_of
from graphpart.tools.compare.rates import measure_rates
from graphpart.units import human_bytes


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity; os.cpu_count where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def search_config(
    graph: Graph, cfg: Config, devices: int, threads: int, cores: int | None = None
) -> tuple[list[Candidate], Rates]:
    """plan --auto's candidates for `cfg`'s training settings, with rates measured here with
    `threads` threads per device, on `cores` cores (default: this machine's) that the devices
    share where they outnumber them."""
    w = workload_of(cfg)
    rates = measure_rates(threads, cfg.train.dtype, graph=graph, workload=w, devices=devices)
    found = search(
        graph,
        w,
        devices=devices,
        budget=budget_of(cfg),
        rates=rates,
        cores=machine_cores() if cores is None else cores,
        threads=threads,
    )
    return found, rates


def train_overrides(best: Candidate) -> dict[str, Any]:
    """The config keys a `graphpart train` run needs to be `best`: its config() and the split
    plan --auto predicted (balanced by FLOPs)."""
    return {**best.config(), "pipeline.strategy": "balanced", "pipeline.cost": "flops"}


def _cli_value(v: Any) -> str:
    """A config value as `--set` reads it back (graphpart.run.checks.coerce)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return ",".join(str(x) for x in v)
    return str(v)


def _flat(cfg: Config) -> dict[str, Any]:
    return {f"{sec}.{k}": v for sec, keys in cfg.to_dict().items() for k, v in keys.items()}


def train_command(cfg: Config, best: Candidate, config_path: str | None = None) -> str:
    """The `graphpart train` command line that trains `best` on `cfg`: the config file
    `config_path` (None: the embedded default config) and a `--set` for every key whose value
    differs from that file's (the plan's own flags, --memory-budget included, and the
    candidate's pipeline keys); every word shell-quoted."""
    want = _flat(make_config(cfg, train_overrides(best)))
    base = _flat(make_config(config_path))
    words = ["graphpart", "train"]
    if config_path is not None:
        words.append(config_path)
    for key, v in want.items():
        if base.get(key) != v:
            words += ["--set", f"{key}={_cli_value(v)}"]
    return " ".join(shlex.quote(w) for w in words)


def sharing_note(devices: int, cores: int, threads: int) -> str | None:
    """One line for a search whose devices outnumber the machine's cores (None otherwise)."""
    if devices * threads <= cores:
        return None
    return (
        f"note: {devices} devices on {cores} cores: the rates assume K stages or replicas share "
        f"them, each busy one at min(1, {cores}/({threads} x busy)) of one device's measured "
        "rate, so setups are ranked by what this machine can run, not by a core per device"
    )


def run_auto(
    cfg: Config,
    *,
    devices: int,
    as_json: bool = False,
    limit: int = 10,
    config_path: str | None = None,
) -> int:
    """Print plan --auto's ranking for `cfg` and the command that trains the best setup.

    `config_path` is the config file `cfg` came from (None: the embedded default), so that
    the printed command names it and `--set`s only what differs from it; without it the
    command `--set`s every key that differs from the embedded config, which trains the same."""
    s = setup(cfg)
    t = cfg.train
    budget = budget_of(cfg)
    cores = machine_cores()
    threads = max(1, cores // max(1, devices))
    found, rates = search_config(s.graph, cfg, devices, threads, cores)
    fitting = [c for c in found if c.fits]
    command = train_command(cfg, fitting[0], config_path) if fitting else None
    if as_json:
        print(
            json.dumps(
                {
                    "devices": devices,
                    "cores": cores,
                    "threads_per_device": threads,
                    "memory_budget": budget,
                    "rates": {
                        "flops_per_s": rates.flops_per_s,
                        "copy_bytes_per_s": rates.copy_bytes_per_s,
                        "hop_s": rates.hop_s,
                    },
                    "candidates": [to_dict(c) for c in found],
                    "best_command": command,
                }
            )
        )
        return 0
    print(
        f"plan --auto: {len(found)} setups considered for {devices} device(s), budget "
        f"{human_bytes(budget) if budget is not None else 'none'}, batch {t.batch_size}; "
        f"{len(fitting)} fit. Rates measured here: {rates.flops_per_s / 1e9:.1f} GFLOP/s per "
        f"device ({threads} core(s)), copy {rates.copy_bytes_per_s / 1e9:.1f} GB/s, hop "
        f"latency {rates.hop_s * 1e3:.3f} ms"
    )
    note = sharing_note(devices, cores, threads)
    if note:
        print(note)
    print(table(found, limit))
    if any(c.tied for c in found[:limit]):
        print(
            f"=N: a tie, predicted steps within {TIE:.0%} of the fastest of the group (the "
            "rates' run-to-run noise), listed fewest devices first, then smallest peak"
        )
    if command is not None:
        print(f"\nbest: {command}")
    else:
        print("\nnothing fits the budget: raise --memory-budget, or lower --batch-size")
    return 0
