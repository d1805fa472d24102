"""`graphpart plan --auto`: measure this machine's rates, search the setups, print the best."""

from __future__ import annotations

import json
import os
import shlex
import sys
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
    share where they outnumber them. The rates are measured alone and with every device
    that has cores of its own busy at once (up to min(devices, cores / threads) processes),
    and on more than one device the driver's call to the workers, on the Ray of `cfg`'s
    pipeline.address (a local one where it is empty)."""
    w = workload_of(cfg)
    cores = machine_cores() if cores is None else cores
    together = busy_at_once(devices, cores, threads)
    rates = measure_rates(
        threads,
        cfg.train.dtype,
        graph=graph,
        workload=w,
        devices=devices,
        together=together,
        calls=devices > 1,
        address=cfg.pipeline.address,
        whole_threads=cores,
    )
    found = search(
        graph, w, devices=devices, budget=budget_of(cfg), rates=rates, cores=cores, threads=threads
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


def busy_at_once(devices: int, cores: int, threads: int) -> int:
    """How many of `devices` can compute at once, each on `threads` of `cores` cores."""
    return max(1, min(devices, cores // max(1, threads)))


def rates_json(rates: Rates) -> dict[str, Any]:
    """The measured rates as plan --auto --json gives them: alone, and `together` with 2, 3,
    ... devices busy at once."""
    keys = ("flops_per_s", "copy_bytes_per_s", "hop_s", "ring_copies", "ring_hop_s", "call_s")
    own = {k: getattr(rates, k) for k in keys}
    whole = {} if rates.whole is None else {"whole": rates_json(rates.whole)}
    return {
        **own,
        **whole,
        "together": [{"devices": n, **rates_json(r)} for n, r in rates.together],
    }


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
    busy = busy_at_once(devices, cores, threads)
    print(
        "plan --auto: timing this machine's kernels, copies and ring"
        + (f", alone and with up to {busy} devices busy at once" if busy > 1 else "")
        + (", and Ray's call to the workers" if devices > 1 else "")
        + " (seconds) ...",
        file=sys.stderr,
        flush=True,
    )
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
                    "rates": rates_json(rates),
                    "candidates": [to_dict(c) for c in found],
                    "best_command": command,
                }
            )
        )
        return 0
    print(
        f"plan --auto: {len(found)} setups considered for {devices} device(s), budget "
        f"{human_bytes(budget) if budget is not None else 'none'}, batch {t.batch_size}; "
        f"{len(fitting)} fit. Rates measured here ({threads} core(s) a device): "
        + "; ".join(
            f"{n} busy at once: {r.flops_per_s / 1e9:.1f} GFLOP/s, copy "
            f"{r.copy_bytes_per_s / 1e9:.1f} GB/s"
            + (
                f", a ring step {r.ring_copies:.1f} copies of its chunk and "
                f"{r.message_s * 1e3:.3f} ms"
                if n > 1
                else ""
            )
            for n, r in ((1, rates), *rates.together)
        )
        + (
            f"; one device on all {cores} cores: {rates.whole.flops_per_s / 1e9:.1f} GFLOP/s"
            if rates.whole is not None
            else ""
        )
        + f"; hop latency {rates.hop_s * 1e3:.3f} ms"
        + (
            f"; the driver's call to {devices} workers {rates.call_s * 1e3:.2f} ms a step"
            if devices > 1
            else ""
        )
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
