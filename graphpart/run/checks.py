"""Config value checks: types (with command-line coercion) and the rule each key must meet."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from graphpart.engines import DEVICES, DP_PLACEMENTS, TRANSPORT_CHOICES, removed_note
from graphpart.errors import ConfigError
from graphpart.ir.ops import ACTIVATIONS, LOSSES
from graphpart.optim import OPTIMIZERS
from graphpart.params import DTYPES
from graphpart.plan.kinds import SCHEDULES
from graphpart.plan.partition import STRATEGIES
from graphpart.units import parse_bytes


def fmt(value: Any) -> str:
    """A value as it would be written in TOML-ish form (for messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(dotted: str, text: str, default: Any) -> Any:
    """A command-line string turned into the type of the field's default."""
    s = text.strip()
    try:
        if isinstance(default, bool):
            if s.lower() in _TRUE | _FALSE:
                return s.lower() in _TRUE
            raise ValueError
        if isinstance(default, int):
            return int(s)
        if isinstance(default, float):
            return float(s)
        if isinstance(default, tuple):
            s = s.removeprefix("[").removesuffix("]").strip()
            return [int(p) for p in s.split(",")] if s else []
    except ValueError:
        raise ConfigError(f"{dotted}={text!r}: expected {_type_name(default)}") from None
    return text


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "a boolean (true or false)"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, tuple):
        return "a list of integers, e.g. [64, 64] (or 64,64 on the command line)"
    return "a string"


def typed(dotted: str, value: Any, default: Any) -> Any:
    """Check the value's type against the default's; ints are accepted for floats."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{dotted}={fmt(value)}: must be a finite number")
    elif isinstance(default, tuple):
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,)  # one hidden layer: 16 as the command line's --hidden 16
        ok = isinstance(value, (list, tuple))
        if ok and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{dotted}={fmt(value)}: sizes must be positive integers")
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{dotted}={fmt(value)}: expected {_type_name(default)}")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


def _positive_int(v: int) -> str | None:
    return None if v >= 1 else "must be a positive integer"


def _at_least(lo: int) -> Callable[[int], str | None]:
    return lambda v: None if v >= lo else f"must be an integer >= {lo}"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _unit(v: float) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _open_unit(v: float) -> str | None:
    return None if 0 < v < 1 else "must be in (0, 1), exclusive"


def _hidden(v: tuple[int, ...]) -> str | None:
    return None if all(h >= 1 for h in v) else "sizes must be positive integers"


def _source(v: str) -> str | None:
    if v in ("digits", "synthetic") or (v.lower().endswith((".npz", ".csv")) and len(v) > 4):
        return None
    return 'must be "digits", "synthetic" or a path ending in .npz or .csv'


_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


def _address(v: str) -> str | None:
    if v in ("", "auto") or _ADDRESS.match(v):
        return None
    return 'must be "" (start a local Ray), "auto", "host:port" or "ray://host:port"'


def _nonempty(v: str) -> str | None:
    return None if v.strip() else "must be a non-empty path"


def _budget(v: str) -> str | None:
    if not v.strip():
        return None
    try:
        parse_bytes(v)
    except ConfigError:
        return 'must be a size such as "64MiB", "1.5GiB", "100MB" or bytes ("" = no budget)'
    return None


def _run_name(v: str) -> str | None:
    bad = "/" in v or "\\" in v or v in (".", "..")
    return 'must be a plain directory name without "/" ("" = timestamped)' if bad else None


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "model.hidden": _hidden,
    "model.activation": _choice(ACTIVATIONS),
    "model.loss": _choice(LOSSES),
    "model.weight_decay": _non_negative,
    "data.source": _source,
    "data.n_samples": _at_least(2),
    "data.n_features": _positive_int,
    "data.n_classes": lambda v: (
        None if v >= 0 else "must be 0 (synthetic data: 10; a file: from its labels) or a count"
    ),
    "data.test_fraction": _open_unit,
    "train.epochs": _positive_int,
    "train.batch_size": _positive_int,
    "train.optimizer": _choice(OPTIMIZERS),
    "train.lr": _positive,
    "train.momentum": _unit,
    "train.beta1": _unit,
    "train.beta2": _unit,
    "train.eps": _positive,
    "train.seed": _at_least(0),
    "train.dtype": _choice(DTYPES),
    "train.log_every": _at_least(0),
    "train.divergence": _non_negative,
    "train.max_failures": _at_least(0),
    "pipeline.stages": _positive_int,
    "pipeline.microbatches": _positive_int,
    "pipeline.schedule": _choice(SCHEDULES),
    "pipeline.chunks": lambda v: (
        None if v >= 0 else "must be 1 or more chunks a device (0: the schedule's own)"
    ),
    "pipeline.strategy": _choice(STRATEGIES),
    "pipeline.address": _address,
    "pipeline.device": _choice(DEVICES),
    "pipeline.transport": lambda v: (
        None if v in TRANSPORT_CHOICES else _choice(TRANSPORT_CHOICES)(v) + removed_note(v)
    ),
    "pipeline.cost": _choice(("flops", "measured")),
    "pipeline.data_parallel": _positive_int,
    "pipeline.placement": _choice(DP_PLACEMENTS),
    "pipeline.memory_budget": _budget,
    "pipeline.step_timeout": _non_negative,
    "run.dir": _nonempty,
    "run.name": _run_name,
}
