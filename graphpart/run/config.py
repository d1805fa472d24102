"""Run configuration: TOML sections as frozen dataclasses, dotted overrides, validation, dumping."""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graphpart.engines import DP_TRANSPORTS, check_virtual, resolve_transport
from graphpart.errors import ConfigError, GraphpartError
from graphpart.plan.kinds import chunks_for, is_virtual
from graphpart.run.checks import CHECKS, coerce, fmt, typed

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
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class DataConfig:
    """[data]: "digits", "synthetic" or a .npz path; n_* apply to "synthetic" only."""

    source: str = "digits"
    n_samples: int = 10000
    n_features: int = 64
    n_classes: int = 0  # classes: 0 = synthetic data's 10, or a file's from its labels
    test_fraction: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    """[train]: epochs, batching, optimizer hyper-parameters, seed, dtype and logging."""

    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seed: int = 0
    dtype: str = "float32"
    log_every: int = 0
    # stop when an epoch's mean loss exceeds this many times the run's best (0: never)
    divergence: float = 1000.0
    # restart dead or stalled stages from the last checkpoint up to this many times
    max_failures: int = 0
    # also write metrics as TensorBoard event files to RUN_DIR/tensorboard/ (needs tensorboardX:
    # pip install 'graphpart[tensorboard]')
    tensorboard: bool = False


@dataclass(frozen=True)
class PipelineConfig:
    """[pipeline]: stages, microbatches, schedule, partition strategy, Ray address, device."""

    stages: int = 1
    microbatches: int = 1
    schedule: str = "1f1b"
    # virtual stages a device (schedules interleaved: any v >= 1, zbv: 2): the model is cut
    # into stages x chunks virtual stages; 0: the schedule's own (2 for both, else 1)
    chunks: int = 0
    strategy: str = "balanced"
    address: str = ""
    device: str = "cpu"
    recompute: bool = False
    # what carries the stages' calls and tensors (graphpart.engines.transports): "inprocess"
    # (every stage in this process), Ray actors with "push" (a call per stage a step, tensors
    # sent stage to stage) or "shm" (push over shared memory between stages on one node);
    # "auto": inprocess for one stage without an address, else shm
    transport: str = "auto"
    cost: str = "flops"  # what `balanced` balances: "flops" or "measured" (a short profiling pass)
    # data parallelism: replicas of the whole model (of its pipeline of `stages` stages: R x K
    # workers), each with batch/replicas rows in `microbatches` micro-batches, gradients summed
    # by a ring all-reduce per stage every step (graphpart.engines.DataParallel)
    data_parallel: int = 1
    # data parallelism: all-reduce each gradient bucket (reverse layer order, workers/buckets.py)
    # while the backward still runs, advanced between its kernel calls (true, the default;
    # false: the same buckets after the backward, bit-identical results)
    allreduce_overlap: bool = True
    # on a Ray cluster of several nodes, what shares a node: "pipeline" (a replica's stages;
    # the replicas across nodes) or "replicas" (stage k of every replica)
    placement: str = "pipeline"
    # per-device memory budget ("64MiB", "1.5GiB", bytes; "" = none): the memory model checks
    # the plan against it before anything runs
    memory_budget: str = ""
    # seconds the driver waits for one step before it calls a stage stalled (0: 20x the
    # slowest recent step, at least 60 s; shm, push and data-parallel transports)
    step_timeout: float = 0.0


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


def _check_chunks(p: PipelineConfig, transport: str) -> None:
    """pipeline.chunks against the schedule, and what runs virtual stages."""
    try:
        chunks_for(p.schedule, p.chunks)
    except GraphpartError as e:
        raise ConfigError(f"pipeline.{e}") from None
    if not is_virtual(p.schedule):
        return
    check_virtual(p.schedule, transport)
    for key, bad, instead in (
        ("data_parallel", p.data_parallel > 1, "data_parallel = 1"),
        ("strategy", p.strategy == "memory", "strategy uniform or balanced"),
    ):
        if bad:
            raise ConfigError(
                f"pipeline.schedule={p.schedule!r} with pipeline.{key}={getattr(p, key)!r}: "
                f"virtual stages do not run with it yet; use {instead}, or a schedule of one "
                "stage a device (gpipe, 1f1b, zb-h1, zb-h2)"
            )


def _check_together(cfg: Config) -> None:
    p, t, d, m = cfg.pipeline, cfg.train, cfg.data, cfg.model
    transport = resolve_transport(p.transport, p.stages, p.address)
    _check_chunks(p, transport)
    if p.data_parallel > 1:
        if p.transport not in DP_TRANSPORTS:
            raise ConfigError(
                f"pipeline.transport={p.transport!r} with pipeline.data_parallel="
                f"{p.data_parallel}: replicas run on Ray actors; use one of "
                f"{', '.join(DP_TRANSPORTS)}"
            )
        if p.data_parallel > t.batch_size:
            raise ConfigError(
                f"pipeline.data_parallel={p.data_parallel} exceeds train.batch_size="
                f"{t.batch_size}: each replica needs at least one row"
            )
        share = t.batch_size // p.data_parallel  # the smallest replica's rows of a minibatch
        if p.microbatches > share:
            raise ConfigError(
                f"pipeline.microbatches={p.microbatches} with pipeline.data_parallel="
                f"{p.data_parallel} and train.batch_size={t.batch_size}: micro-batches are per "
                f"replica, and a replica's share of a minibatch can be {share} row(s); use "
                f"microbatches 1..{share} (or a larger batch_size)"
            )
    if p.microbatches > t.batch_size:
        raise ConfigError(
            f"pipeline.microbatches={p.microbatches} exceeds train.batch_size={t.batch_size}: "
            f"each microbatch needs at least one sample"
        )
    if d.n_classes == 1 and m.loss == "cross_entropy":
        raise ConfigError(
            f"data.n_classes={d.n_classes}: classification (model.loss='cross_entropy') "
            f"needs at least 2 classes (or 0: synthetic data's 10, a file's from its labels)"
        )
    if d.source == "digits" and d.n_classes not in (0, 10):
        raise ConfigError(
            f"data.n_classes={d.n_classes}: the digits set has 10 classes; give 0 or 10"
        )


def _build(values: Mapping[str, Mapping[str, Any]]) -> Config:
    sections = {}
    for name, cls in SECTIONS.items():
        kwargs = {}
        for key, default in _defaults(name).items():
            dotted = f"{name}.{key}"
            raw = values.get(name, {}).get(key, default)
            value = typed(dotted, raw, default)
            check = CHECKS.get(dotted)
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
            value = coerce(dotted, value, default)
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
