"""The configuration flags: which config key each sets, which commands take them, and the
config a command line makes."""

from __future__ import annotations

import argparse
from typing import Any

from graphpart.engines import check_device
from graphpart.errors import GraphpartError
from graphpart.ir.ops import ACTIVATIONS, LOSSES
from graphpart.plan.kinds import SCHEDULES
from graphpart.run.config import Config
from graphpart.run.session import DEFAULT_CONFIG, make_config


def _positive(text: str) -> int:
    """An integer of 1 or more (argparse names the flag and the value when it is not)."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not 1 or more")
    return n


# flag -> (dotted config key, type, help)
FLAGS: dict[str, tuple[str, Any, str]] = {
    "--data": (
        "data.source",
        str,
        "digits | synthetic | path/to/data.npz (arrays X and y) | path/to/data.csv (label last)",
    ),
    "--n-samples": ("data.n_samples", int, "synthetic data: number of samples"),
    "--n-features": ("data.n_features", int, "synthetic data: input features"),
    "--n-classes": (
        "data.n_classes",
        int,
        "classes (synthetic data: default 10; a .npz/.csv file: from its labels unless given)",
    ),
    "--hidden": ("model.hidden", str, "hidden layer sizes, e.g. 256,256"),
    "--activation": ("model.activation", str, " | ".join(ACTIVATIONS)),
    "--loss": ("model.loss", str, " | ".join(LOSSES)),
    "--weight-decay": ("model.weight_decay", float, "lambda of the l2 regulariser s"),
    "--bias": ("model.bias", str, "true | false"),
    "--epochs": ("train.epochs", int, "epochs"),
    "--batch-size": ("train.batch_size", int, "minibatch size (split into micro-batches)"),
    "--optimizer": ("train.optimizer", str, "sgd | adam"),
    "--lr": ("train.lr", float, "learning rate"),
    "--momentum": ("train.momentum", float, "SGD momentum"),
    "--seed": ("train.seed", int, "seed for initialisation, shuffling and the data split"),
    "--dtype": ("train.dtype", str, "float32 | float64"),
    "--log-every": ("train.log_every", int, "also log every N steps to metrics.jsonl"),
    "--stages": ("pipeline.stages", int, "pipeline stages (devices)"),
    "--microbatches": (
        "pipeline.microbatches",
        int,
        "micro-batches per minibatch (with one stage: gradient accumulation over them)",
    ),
    "--schedule": ("pipeline.schedule", str, " | ".join(SCHEDULES)),
    "--chunks": (
        "pipeline.chunks",
        _positive,
        "virtual stages a device, for --schedule interleaved (any v >= 1) or zbv (2): the "
        "model is cut into stages x chunks virtual stages (default: the schedule's own, 2)",
    ),
    "--strategy": ("pipeline.strategy", str, "uniform | balanced | memory"),
    "--address": (
        "pipeline.address",
        str,
        "join a Ray cluster: auto (the one this machine's Ray records name) | host:port | "
        "ray://host:port (default: none: a local Ray started for the run)",
    ),
    "--device": ("pipeline.device", str, "cpu | cuda"),
    "--transport": (
        "pipeline.transport",
        str,
        "auto | inprocess | shm | push: what carries the stages' calls and tensors",
    ),
    "--cost": ("pipeline.cost", str, "flops | measured: what the balanced strategy balances"),
    "--data-parallel": (
        "pipeline.data_parallel",
        int,
        "R replicas of the whole model on Ray actors, each on 1/R of the minibatch in M "
        "micro-batches, gradients all-reduced every step; with K stages, R replicas of the "
        "K-stage pipeline: R x K workers",
    ),
    "--allreduce-overlap": (
        "pipeline.allreduce_overlap",
        str,
        "true | false: with --data-parallel, all-reduce each gradient bucket while the "
        "backward still runs (the default), or after it",
    ),
    "--placement": (
        "pipeline.placement",
        str,
        "pipeline | replicas: on a cluster of several nodes, what shares a node with "
        "--data-parallel and --stages (a replica's stages, or stage k of every replica)",
    ),
    "--memory-budget": (
        "pipeline.memory_budget",
        str,
        "per-device memory budget, e.g. 64MiB, for what the memory model predicts a worker "
        "allocates (tensors, optimizer state, channel buffers); a worker process's own baseline "
        "(Python, NumPy, Numba, Ray: about 210 MiB, shown by graphpart profile) is not counted. "
        "A plan that does not fit is refused",
    ),
    "--recompute": ("pipeline.recompute", str, "true | false: recompute activations in backward"),
    "--max-failures": (
        "train.max_failures",
        int,
        "restart dead or stalled stages from the last checkpoint up to N times",
    ),
    "--step-timeout": (
        "pipeline.step_timeout",
        float,
        "seconds a step may take before a stage is called stalled (0: from measured steps)",
    ),
    "--run-dir": ("run.dir", str, "folder for run directories"),
    "--name": ("run.name", str, "run directory name (default: a timestamp)"),
}


# which config keys each command's flags set (a prefix "data." is the whole section); the
# others would not change what the command does. --set takes any key everywhere.
_MODEL = ("data.", "model.")
COMMAND_KEYS: dict[str, tuple[str, ...]] = {
    "plan": _MODEL
    + ("train.batch_size", "train.optimizer", "train.dtype")
    + tuple(
        f"pipeline.{k}"
        for k in (
            "stages microbatches schedule chunks strategy cost recompute memory_budget "
            "data_parallel device"
        ).split()
    ),
    "graph": (*_MODEL, "pipeline.stages", "pipeline.strategy", "pipeline.cost"),
    "profile": _MODEL
    + ("train.batch_size", "train.optimizer", "train.seed", "train.dtype")
    + tuple(
        f"pipeline.{k}"
        for k in (
            "stages microbatches schedule strategy cost recompute memory_budget device "
            "transport address data_parallel allreduce_overlap"
        ).split()
    ),
    "compare": _MODEL  # not pipeline.schedule: compare runs both schedules
    + ("train.", "run.dir")
    + tuple(
        f"pipeline.{k}"
        for k in (
            "microbatches strategy cost recompute memory_budget device transport "
            "address step_timeout"
        ).split()
    ),
    "hessian": (
        *_MODEL,
        "train.batch_size",
        "train.seed",
        "train.dtype",
        "pipeline.stages",
        "pipeline.microbatches",
        "pipeline.schedule",
        "pipeline.strategy",
    ),
}


# a command's own default for a key, where it is not the config's (shown in --help)
COMMAND_DEFAULTS: dict[str, dict[str, str]] = {
    "compare": {"pipeline.microbatches": "2 x --devices, at most the batch size"},
}


def _default(key: str) -> Any:
    """The embedded config's value of a dotted key, as a user would type it."""
    section, name = key.split(".")
    v = getattr(getattr(Config(), section), name)
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, bool):
        return str(v).lower()
    return v


def add_config_args(p: argparse.ArgumentParser, command: str | None = None) -> None:
    """The config file argument, --set, and the flags of the keys `command` uses (every key
    for train), each with the embedded config's default."""
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help=f"TOML config (default: the embedded {DEFAULT_CONFIG}, as in examples/)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key, e.g. --set train.lr=0.01",
    )
    only = COMMAND_KEYS.get(command or "")
    for flag, (key, typ, helptext) in FLAGS.items():
        if only is None or any(key == k or (k.endswith(".") and key.startswith(k)) for k in only):
            d = COMMAND_DEFAULTS.get(command or "", {}).get(key, _default(key))
            shown = (
                ""
                if "default" in helptext
                else f" (default: {d})"
                if d not in ("", None)
                else " (default: none)"
            )
            p.add_argument(
                flag,
                dest=key,
                type=typ,
                default=None,
                metavar=flag.lstrip("-").replace("-", "_").upper(),
                help=(helptext + shown).replace("%", "%%"),
            )


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the command line sets: --set items, then the flags."""
    overrides: dict[str, Any] = {}
    for item in args.set:
        if "=" not in item:
            raise GraphpartError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=0.01")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
    for key, _, _ in FLAGS.values():
        v = getattr(args, key, None)
        if v is not None:
            overrides[key] = v
    if getattr(args, "train.tensorboard", None):
        overrides["train.tensorboard"] = True
    return overrides


def load_cli_config(args: argparse.Namespace) -> Config:
    return make_config(args.config, cli_overrides(args))


def check_local_device(cfg: Config) -> None:
    """A device this machine lacks is refused before anything is written (a run directory).
    With --address the workers may run elsewhere; each checks its own device as it starts."""
    if not cfg.pipeline.address:
        check_device(cfg.pipeline.device)
