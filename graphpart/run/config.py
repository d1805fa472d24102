"""Run configuration: TOML sections as frozen dataclasses, dotted overrides, validation, dumping."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from graphpart.engines import DEVICES, TRANSPORT_CHOICES, resolve_transport
from graphpart.errors import ConfigError
from graphpart.ir.ops import ACTIVATIONS, LOSSES
from graphpart.optim import OPTIMIZERS
from graphpart.params import DTYPES
from graphpart.plan.partition import STRATEGIES
from graphpart.plan.schedule import KINDS as SCHEDULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class ModelConfig:
    """[model]: layer sizes, activation, loss and the l2 weight-decay lambda."""

    hidden: tuple[int, ...] = (64, 64, 64)
    activation: str = "relu"
    bias: bool = True
    loss: str = "cross_entropy"
    weight_decay: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    """[data]: "digits", "synthetic" or a .npz path; n_* apply to "synthetic" only."""

    source: str = "digits"
    n_samples: int = 10000
    n_features: int = 64
    n_classes: int = 10
    test_fraction: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    """[train]: epochs, batching, optimizer hyper-parameters, seed and dtype."""

    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seed: int = 0
    dtype: str = "float32"
    log_every: int = 0


@dataclass(frozen=True)
class PipelineConfig:
    """[pipeline]: stages, microbatches, schedule, partition strategy, Ray address, device."""

    stages: int = 1
    microbatches: int = 1
    schedule: str = "1f1b"
    strategy: str = "balanced"
    address: str = ""
    device: str = "cpu"
    recompute: bool = False
    # what carries the stages' calls and tensors (graphpart.engines.transports): "inprocess"
    # (every stage in this process), Ray actors with "tasks" (a task per action), "push" (a
    # call per stage a step, tensors sent stage to stage) or "compiled" (a Ray Compiled Graph);
    # "auto": inprocess for one stage without an address, else push
    transport: str = "auto"
    cost: str = "flops"  # what `balanced` balances: "flops" or "measured" (a short profiling pass)


@dataclass(frozen=True)
class RunConfig:
    """[run]: output directory and run name ("" = timestamped)."""

    dir: str = "runs"
    name: str = ""


@dataclass(frozen=True)
class Config:
    """The whole run configuration, one field per TOML section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{section: {key: value}} with lists for tuples (TOML/JSON friendly)."""
        return {
            name: {k: list(v) if isinstance(v, tuple) else v for k, v in _items(section)}
            for name, section in _items(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "config") -> Config:
        """Build and validate from {section: {key: value}}; missing keys take defaults."""
        return _build(_merge(_empty(), data, origin))


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}


def _items(obj: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]


def _defaults(section: str) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}


def _empty() -> dict[str, dict[str, Any]]:
    return {name: {} for name in SECTIONS}


def fmt(value: Any) -> str:
    """A value as it would be written in TOML-ish form (for messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown_section(name: str, origin: str) -> ConfigError:
    owners = [s for s in SECTIONS if name in _defaults(s)]
    hint = f"; did you mean '{owners[0]}.{name}'?" if owners else _suggest(name, list(SECTIONS))
    return ConfigError(
        f"{origin}: unknown config section {name!r} (valid sections: {', '.join(SECTIONS)}){hint}"
    )


def _unknown_key(section: str, key: str, origin: str) -> ConfigError:
    valid = list(_defaults(section))
    return ConfigError(
        f"{origin}: unknown key '{section}.{key}' (valid keys in [{section}]: "
        f"{', '.join(valid)}){_suggest(key, valid)}"
    )


def _merge(
    into: dict[str, dict[str, Any]], data: Mapping[str, Any], origin: str
) -> dict[str, dict[str, Any]]:
    for name, table in data.items():
        owners = [s for s in SECTIONS if name in _defaults(s)]
        if name not in SECTIONS and owners and not isinstance(table, Mapping):
            raise ConfigError(
                f"{origin}: key {name!r} must be inside a section; "
                f"did you mean '{owners[0]}.{name}' (under [{owners[0]}])?"
            )
        if name not in SECTIONS:
            raise _unknown_section(str(name), origin)
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"{origin}: '{name}' must be a table [{name}] of keys, not {fmt(table)}"
            )
        if name == "pipeline":
            table = _migrate_pipeline(table)
        for key, value in table.items():
            if key not in _defaults(name):
                raise _unknown_key(name, str(key), origin)
            into[name][key] = value
    return into


def _migrate_pipeline(table: Mapping[str, Any]) -> dict[str, Any]:
    """Read an older [pipeline] table: `runtime` (auto | local | ray) and `transport` (a Ray
    transport) were two keys for what `transport` alone says now."""
    table = dict(table)
    if "runtime" not in table:
        return table
    runtime = table.pop("runtime")
    ray_transport = table.get("transport", "push")
    on_ray = runtime == "ray" or (
        runtime == "auto" and (table.get("stages", 1) != 1 or table.get("address", ""))
    )
    table["transport"] = ray_transport if on_ray else "inprocess"
    return table


def _split_override(dotted: str) -> tuple[str, str]:
    section, _, key = str(dotted).partition(".")
    if not key:
        owners = [s for s in SECTIONS if section in _defaults(s)]
        hint = f"; did you mean '{owners[0]}.{section}'?" if owners else ""
        raise ConfigError(f"override key {dotted!r} must be section.key (e.g. train.epochs){hint}")
    if section not in SECTIONS:
        raise _unknown_section(section, "override")
    if key not in _defaults(section):
        raise _unknown_key(section, key, "override")
    return section, key


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(dotted: str, text: str, default: Any) -> Any:
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


def _typed(dotted: str, value: Any, default: Any) -> Any:
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
    if v in ("digits", "synthetic") or (v.lower().endswith(".npz") and len(v) > 4):
        return None
    return 'must be "digits", "synthetic" or a path ending in .npz'


_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


def _address(v: str) -> str | None:
    if v in ("", "auto") or _ADDRESS.match(v):
        return None
    return 'must be "" (start a local Ray), "auto", "host:port" or "ray://host:port"'


def _nonempty(v: str) -> str | None:
    return None if v.strip() else "must be a non-empty path"


def _run_name(v: str) -> str | None:
    bad = "/" in v or "\\" in v or v in (".", "..")
    return 'must be a plain directory name without "/" ("" = timestamped)' if bad else None


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "model.hidden": _hidden,
    "model.activation": _choice(ACTIVATIONS),
    "model.loss": _choice(LOSSES),
    "model.weight_decay": _non_negative,
    "data.source": _source,
    "data.n_samples": _at_least(2),
    "data.n_features": _positive_int,
    "data.n_classes": _positive_int,
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
    "pipeline.stages": _positive_int,
    "pipeline.microbatches": _positive_int,
    "pipeline.schedule": _choice(SCHEDULES),
    "pipeline.strategy": _choice(STRATEGIES),
    "pipeline.address": _address,
    "pipeline.device": _choice(DEVICES),
    "pipeline.transport": _choice(TRANSPORT_CHOICES),
    "pipeline.cost": _choice(("flops", "measured")),
    "run.dir": _nonempty,
    "run.name": _run_name,
}


def _check_together(cfg: Config) -> None:
    p, t, d, m = cfg.pipeline, cfg.train, cfg.data, cfg.model
    resolve_transport(p.transport, p.stages, p.address)
    if p.microbatches > t.batch_size:
        raise ConfigError(
            f"pipeline.microbatches={p.microbatches} exceeds train.batch_size={t.batch_size}: "
            f"each microbatch needs at least one sample"
        )
    if d.source == "synthetic" and m.loss == "cross_entropy" and d.n_classes < 2:
        raise ConfigError(
            f"data.n_classes={d.n_classes}: classification (model.loss='cross_entropy') "
            f"needs at least 2 classes"
        )


def _build(values: Mapping[str, Mapping[str, Any]]) -> Config:
    sections = {}
    for name, cls in SECTIONS.items():
        kwargs = {}
        for key, default in _defaults(name).items():
            dotted = f"{name}.{key}"
            raw = values.get(name, {}).get(key, default)
            value = _typed(dotted, raw, default)
            check = _CHECKS.get(dotted)
            problem = check(value) if check else None
            if problem:
                raise ConfigError(f"{dotted}={fmt(raw)}: {problem}")
            kwargs[key] = value
        sections[name] = cls(**kwargs)
    cfg = Config(**sections)
    _check_together(cfg)
    return cfg


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (give an existing .toml file, "
            f"e.g. examples/digits.toml)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        msg = " ".join(str(exc).split())
        raise ConfigError(f"{path}: TOML syntax error: {msg}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (expected a TOML config)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from None


def load_config(path: str | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file at `path` (if given), then dotted `overrides`.

    Override values may be typed already or strings from the command line, which are coerced
    to the field's type ("3" -> 3, "true" -> True, "64,64" -> [64, 64]).
    """
    values = _empty()
    if path is not None:
        values = _merge(values, _read_toml(str(path)), str(path))
    for dotted, value in (overrides or {}).items():
        section, key = _split_override(dotted)
        default = _defaults(section)[key]
        if isinstance(value, str) and not isinstance(default, str):
            value = _coerce(dotted, value, default)
        values[section][key] = value
    return _build(values)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    out = []
    for ch in str(value):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def dump_toml(config: Config) -> str:
    """The config as TOML text that `load_config` reads back to an equal Config."""
    lines = ["# graphpart run configuration"]
    for name, table in config.to_dict().items():
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"
