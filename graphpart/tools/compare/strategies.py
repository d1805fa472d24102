"""The setups `graphpart compare` runs side by side, each as config overrides of one base config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from graphpart.engines import DP_TRANSPORTS
from graphpart.errors import ConfigError
from graphpart.run.config import Config
from graphpart.tools.compare.grid import KEY as GRID_KEY
from graphpart.tools.compare.grid import GridShape, grid_shape

LR_RULES = ("linear", "sqrt", "none")  # how strategy b scales the learning rate to B/K rows


@dataclass(frozen=True)
class Strategy:
    """One way to train the same model: a letter, a short name, what it is, its overrides."""

    key: str
    name: str
    title: str
    devices: int
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.key}. {self.name}"


def scaled_lr(lr: float, batch: int, small: int, rule: str) -> float:
    """The learning rate for `small` rows per step when `lr` was tuned for `batch` rows."""
    if rule == "linear":
        return lr * small / batch
    if rule == "sqrt":
        return lr * math.sqrt(small / batch)
    if rule == "none":
        return lr
    raise ConfigError(f"--lr-rule {rule!r}; valid: {', '.join(LR_RULES)}")


def make_strategies(
    cfg: Config, devices: int, microbatches: int, lr_rule: str, *, n_layers: int
) -> list[Strategy]:
    """a-h of the comparison for `devices` devices and `microbatches` pipeline micro-batches.

    a one device, minibatch B; b one device, minibatch ceil(B/K), lr by `lr_rule`; c one
    device, B in K accumulated micro-batches; d/e K-stage pipelines (GPipe / 1F1B) with M
    micro-batches; f K data-parallel replicas of ceil(B/K) rows, gradients all-reduced;
    g 1F1B with activation recomputation; h, with at least 4 devices, R replicas of a
    K'-stage 1F1B pipeline (2-D, R x K' <= K: `grid.grid_shape`). Stage and replica counts
    above what the model or the minibatch allow are errors, not silently shrunk.
    """
    B, K, M = cfg.train.batch_size, int(devices), int(microbatches)
    if K < 2:
        raise ConfigError(f"--devices {K}: compare needs at least 2 devices to compare with one")
    if K > n_layers:
        raise ConfigError(
            f"--devices {K}: the model has {n_layers} layers, so a pipeline has at most "
            f"{n_layers} stages; use --devices 2..{n_layers} or more --hidden layers"
        )
    if K > B or M > B:
        raise ConfigError(
            f"--devices {K} / --microbatches {M} with train.batch_size={B}: every device and "
            "micro-batch needs at least one row; use a larger --batch-size"
        )
    small = -(-B // K)
    lr_b = scaled_lr(cfg.train.lr, B, small, lr_rule)
    one = {
        "pipeline.stages": 1,
        "pipeline.microbatches": 1,
        "pipeline.data_parallel": 1,
        "pipeline.recompute": False,
        "pipeline.transport": "inprocess" if not cfg.pipeline.address else "auto",
    }
    pipe = {
        "pipeline.stages": K,
        "pipeline.microbatches": M,
        "pipeline.data_parallel": 1,
        "pipeline.recompute": False,
        "pipeline.transport": cfg.pipeline.transport,
    }
    out = [
        Strategy("a", "one device", f"one device, minibatch {B}", 1, one),
        Strategy(
            "b",
            "smaller minibatch",
            f"one device, minibatch {small}, lr {lr_b:.3g} ({lr_rule} rule from {cfg.train.lr:g})",
            1,
            {**one, "train.batch_size": small, "train.lr": lr_b},
        ),
        Strategy(
            "c",
            "accumulation",
            f"one device, {K} accumulated micro-batches of <= {small}",
            1,
            {**one, "pipeline.microbatches": K},
        ),
        Strategy(
            "d",
            "GPipe",
            f"{K}-stage pipeline, GPipe, {M} micro-batches",
            K,
            {**pipe, "pipeline.schedule": "gpipe"},
        ),
        Strategy(
            "e",
            "1F1B",
            f"{K}-stage pipeline, 1F1B, {M} micro-batches",
            K,
            {**pipe, "pipeline.schedule": "1f1b"},
        ),
        Strategy(
            "f",
            "data parallel",
            f"{K} replicas of {small} rows, ring all-reduce",
            K,
            {
                **one,
                "pipeline.data_parallel": K,
                "pipeline.transport": _dp_transport(cfg.pipeline.transport),
            },
        ),
        Strategy(
            "g",
            "1F1B + recompute",
            f"{K}-stage pipeline, 1F1B, {M} micro-batches, recomputed activations",
            K,
            {**pipe, "pipeline.schedule": "1f1b", "pipeline.recompute": True},
        ),
    ]
    shape = grid_shape(K, n_layers, B, M)
    if shape is not None:
        out.append(grid_strategy(cfg, shape))
    return out


def grid_strategy(cfg: Config, shape: GridShape) -> Strategy:
    """Strategy h: `shape`'s R replicas of a K-stage pipeline (2-D), on R x K devices."""
    return Strategy(
        GRID_KEY,
        "2-D",
        shape.title(),
        shape.devices,
        shape.overrides(_dp_transport(cfg.pipeline.transport)),
    )


def auto_strategy(overrides: dict[str, Any], title: str, devices: int) -> Strategy:
    """The setup `plan --auto` ranked first, as one more strategy."""
    return Strategy("auto", "plan --auto", title, devices, overrides)


def _dp_transport(transport: str) -> str:
    return transport if transport in DP_TRANSPORTS else "auto"
