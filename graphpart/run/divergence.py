"""Divergence: a step, an epoch or the state that must not become a checkpoint, said in one line."""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from graphpart.engines import StepResult
from graphpart.errors import Diverged
from graphpart.plan.partition import Plan
from graphpart.run.diagnose import first_non_finite
from graphpart.run.progress import Progress


class Stateful(Protocol):
    """What the checks read of an engine: its state (parameters and optimizer buffers)."""

    def get_state(self) -> list[dict[str, Any]]: ...


def culprit(plan: Plan, engine: Stateful, X: np.ndarray, y: np.ndarray) -> str | None:
    """The first non-finite value of the graph on this minibatch, with the parameters as the
    step left them (the reference autodiff, in this process); None if it cannot tell."""
    try:
        params = {n: w for st in engine.get_state() for n, w in st["params"].items()}
        return first_non_finite(plan, params, {"x": X, "y": y})
    except Exception:  # noqa: BLE001 - a diagnosis must not hide the divergence it explains
        return None


def non_finite(r: StepResult, step: int, epoch: int, lr: float, culprit: str | None = None) -> str:
    """Which stage's part of J became non-finite, at which step, and the first node that did."""
    where = [
        f"stage {k}'s " + ("data loss L" if not math.isfinite(f.loss) else "regulariser s")
        for k, f in enumerate(r.stages)
        if not (math.isfinite(f.loss) and math.isfinite(f.s))
    ]
    return (
        f"objective J became {r.J} at step {step} (epoch {epoch})"
        + (f", first in {where[0]}" if where else "")
        + (
            f"; recomputed on that minibatch with the parameters after the step, the first "
            f"non-finite value of the graph is {culprit}"
            if culprit
            else ""
        )
        + f"; no checkpoint was written from it (the last good one is kept); lower train.lr "
        f"(now {lr})"
    )


def check_epoch(m: dict[str, Any], st: Progress, factor: float, lr: float) -> None:
    """Stop before checkpointing an epoch whose loss is non-finite or exploded: its mean train
    loss over `factor` times the best epoch's (or the first step's), or a non-finite test loss."""
    if not math.isfinite(m["test_loss"]):
        raise Diverged(
            f"test loss became {m['test_loss']} after epoch {m['epoch']} (step {m['step']}); "
            f"no checkpoint was written from it (the last good one is kept); lower train.lr "
            f"(now {lr})"
        )
    ref = min(st.best_loss, st.first_loss if st.first_loss is not None else math.inf)
    if factor > 0 and math.isfinite(ref) and m["train_loss"] > factor * max(ref, 1e-12):
        raise Diverged(
            f"the loss exploded: epoch {m['epoch']} (step {m['step']}) averaged "
            f"{m['train_loss']:.4g}, over train.divergence={factor:g} times the run's best "
            f"{ref:.4g}; no checkpoint was written from it (the last good one is kept); lower "
            f"train.lr (now {lr})"
        )
    st.best_loss = min(st.best_loss, m["train_loss"])


def check_step(J: float, st: Progress, factor: float, lr: float, epoch: int) -> None:
    """A step whose loss is `factor` times the best step's and worse than the untrained
    model's first step has diverged (the epoch mean can hide it: a few huge steps, then a
    plateau at chance)."""
    ref = st.best_step_loss
    first = st.first_loss if st.first_loss is not None else math.inf
    if factor > 0 and math.isfinite(ref) and J > factor * max(ref, 1e-3 * first) and J > first:
        raise Diverged(
            f"the loss exploded: step {st.step + 1} (epoch {epoch}) has J = {J:.4g}, over "
            f"train.divergence={factor:g} times the run's best step ({ref:.4g}) and above its "
            f"first ({first:.4g}); no checkpoint was written from it (the last good one is "
            f"kept); lower train.lr (now {lr})"
        )
    st.best_step_loss = min(st.best_step_loss, J)


# test accuracy collapsed: the best epoch was at least a quarter of the way from chance to
# perfect, and this one is within 5% of the way from chance
COLLAPSE_FROM, COLLAPSE_TO = 0.25, 0.05


def check_collapse(m: dict[str, Any], st: Progress, y_test: np.ndarray, lr: float) -> None:
    """Stop before checkpointing an epoch whose test accuracy fell back to chance (what
    predicting the most common test label scores) after the run had learnt something."""
    acc = m.get("test_accuracy")
    if acc is None or len(y_test) == 0:
        return
    chance = float(np.bincount(np.asarray(y_test, dtype=np.int64)).max() / len(y_test))
    span = 1.0 - chance
    if st.best_accuracy >= chance + COLLAPSE_FROM * span and acc <= chance + COLLAPSE_TO * span:
        raise Diverged(
            f"test accuracy collapsed to chance: epoch {m['epoch']} (step {m['step']}) scored "
            f"{acc:.4f} where the run's best was {st.best_accuracy:.4f} and chance (the most "
            f"common label) is {chance:.4f}; no checkpoint was written from it (the last good "
            f"one is kept); lower train.lr (now {lr})"
        )
    st.best_accuracy = max(st.best_accuracy, acc)


def check_finite_state(states: list[dict[str, Any]], step: int) -> None:
    """Parameters and optimizer state must be finite before a checkpoint is written (an inf
    Adam second moment freezes the parameters it belongs to while they stay finite)."""
    for k, state in enumerate(states):
        for name, w in state["params"].items():
            if not np.all(np.isfinite(w)):
                raise Diverged(
                    f"parameter {name} (stage {k}) is not finite after step {step}; no "
                    "checkpoint was written from it (the last good one is kept); lower train.lr"
                )
        for name, bufs in state.get("opt", {}).items():
            for i, b in enumerate(bufs):
                if not np.all(np.isfinite(b)):
                    raise Diverged(
                        f"optimizer state {i} of parameter {name} (stage {k}) is not finite "
                        f"after step {step} (the gradients overflowed {b.dtype}: are the "
                        "targets or inputs on a sane scale?); no checkpoint was written from "
                        "it (the last good one is kept); lower train.lr or rescale the data"
                    )
