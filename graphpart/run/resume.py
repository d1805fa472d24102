"""Going on with a run directory: what a resume may change, its checkpoint, the user's advice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from graphpart.errors import ConfigError
from graphpart.run.checkpoint import RunDir, load_checkpoint
from graphpart.run.config import Config, load_config
from graphpart.run.setup import Setup

# resuming may change how a run trains (epochs, learning rate, stages, schedule, ...) but not
# what it trains: these keys decide the model, the data and its split, and what the
# checkpoint's optimizer state means
FIXED_ON_RESUME = ("model.", "data.", "train.seed", "train.dtype", "train.optimizer")

Changes = dict[str, tuple[Any, Any]]  # config key -> (old value, new value)


def flat(cfg: Config) -> dict[str, Any]:
    """Every config key by dotted name."""
    return {f"{sec}.{k}": v for sec, keys in cfg.to_dict().items() for k, v in keys.items()}


def fixed_keys(cfg: Config) -> dict[str, Any]:
    """The config keys a resume keeps, by dotted name (kept in every checkpoint)."""
    return {k: v for k, v in flat(cfg).items() if k.startswith(FIXED_ON_RESUME)}


def _check_changes(old: dict[str, Any], new: Config, run: Path, where: str = "was") -> None:
    b = fixed_keys(new)
    changed = [k for k in b if k in old and old[k] != b[k]]
    if changed:
        k = changed[0]
        raise ConfigError(
            f"--resume {run}: {k} {where} {old[k]!r}, now {b[k]!r}; a resumed run keeps its "
            "model, data, seed, dtype and optimizer (start a new run to change them)"
        )


def open_resumed(resume: str | Path, s: Setup) -> tuple[RunDir, dict | None, Changes]:
    """The run directory to go on with (locked), its checkpoint (None: none yet, so the run
    starts again from the beginning), and what `s.config` changes of its config.toml, each
    checked against `s.config` before anything is written."""
    cfg = s.config
    run = RunDir.open_existing(resume)
    try:
        old_cfg = load_config(str(run.path / "config.toml"))
        _check_changes(fixed_keys(old_cfg), cfg, run.path)
        a, b = flat(old_cfg), flat(cfg)
        changed = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
        ck = None
        if run.has_checkpoint:
            ck = load_checkpoint(run.checkpoint_path, s.graph, s.optimizer.state_slots)
            if ck["fixed"] is not None:  # config.toml edited by hand since the checkpoint
                _check_changes(ck["fixed"], cfg, run.path, where="made the checkpoint with")
            done = ck["epoch"]
            finished = state_of(run) == "completed"
            if done > cfg.train.epochs or (done == cfg.train.epochs and finished):
                raise ConfigError(
                    f"--resume {run.path}: the run has "
                    + ("finished" if finished else "trained")
                    + f" {done} epoch(s) and train.epochs={cfg.train.epochs}; give --epochs N "
                    f"with N > {done} to train on"
                    + ("" if finished else f" (or N = {done} to complete it as it is)")
                )
    except BaseException:
        run.unlock()
        raise
    return run, ck, changed


def plain(changed: Changes) -> Changes:
    """JSON-ready values (tuples of hidden sizes as lists)."""

    def v(x: Any) -> Any:
        return list(x) if isinstance(x, tuple) else x

    return {k: (v(a), v(b)) for k, (a, b) in changed.items()}


def resume_advice(run: RunDir) -> str:
    """What `--resume` will do with this run directory now."""
    if run.has_checkpoint:
        ck = _checkpoint_epoch(run)
        return f"the checkpoint of epoch {ck} is kept: continue with {_resume_hint(run)}"
    return (
        "no epoch had ended, so there is no checkpoint: "
        f"{_resume_hint(run)} starts the run again from the beginning"
    )


def _checkpoint_epoch(run: RunDir) -> str:
    try:
        with np.load(run.checkpoint_path) as z:
            return str(json.loads(z["meta"].tobytes().decode())["epoch"])
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


def state_of(run: RunDir) -> str:
    """summary.json's state ("" if there is none to read)."""
    try:
        return str(json.loads((run.path / "summary.json").read_text()).get("state", ""))
    except (OSError, ValueError):
        return ""


def _resume_hint(run: RunDir) -> str:
    return f"`graphpart train --resume {run.path}`"
