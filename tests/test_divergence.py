"""Divergence checks (graphpart.run.divergence).

Contract: a non-finite step names its step, epoch and stage; an epoch whose mean loss is over
train.divergence times the best, or whose test loss is non-finite, is refused; a step far above
the best and the first is refused; test accuracy that falls back to chance after the run had
learnt something is refused; non-finite parameters or optimizer state are refused before a
checkpoint. Each message says that no checkpoint was written from it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphpart.errors import Diverged
from graphpart.run.divergence import (
    check_collapse,
    check_epoch,
    check_finite_state,
    check_step,
)
from graphpart.run.progress import Progress


def test_accuracy_that_collapses_to_chance_is_divergence():
    """After a good epoch, test accuracy back at chance (the most common label's share) stops
    the run; never having left chance does not, nor does a merely worse epoch."""
    y = np.arange(100) % 10  # chance: 0.1
    st = Progress()
    check_collapse({"test_accuracy": 0.1, "epoch": 1, "step": 9}, st, y, 0.1)
    check_collapse({"test_accuracy": 0.8, "epoch": 2, "step": 18}, st, y, 0.1)
    check_collapse({"test_accuracy": 0.5, "epoch": 3, "step": 27}, st, y, 0.1)
    with pytest.raises(Diverged, match="collapsed to chance: epoch 4 .* best was 0.8000"):
        check_collapse({"test_accuracy": 0.12, "epoch": 4, "step": 36}, st, y, 0.1)


def test_an_epoch_over_the_divergence_factor_is_refused():
    """The epoch mean over factor x the best epoch (or the first step): Diverged; a
    non-finite test loss too; a merely worse epoch is not."""
    st = Progress(first_loss=2.0)
    check_epoch({"train_loss": 1.0, "test_loss": 1.0, "epoch": 1, "step": 5}, st, 100.0, 0.1)
    check_epoch({"train_loss": 50.0, "test_loss": 1.0, "epoch": 2, "step": 10}, st, 100.0, 0.1)
    assert st.best_loss == 1.0
    with pytest.raises(Diverged, match=r"the loss exploded: epoch 3 \(step 15\)"):
        check_epoch({"train_loss": 101.0, "test_loss": 1.0, "epoch": 3, "step": 15}, st, 100.0, 0.1)
    with pytest.raises(Diverged, match="test loss became nan after epoch 4"):
        check_epoch({"train_loss": 1.0, "test_loss": math.nan, "epoch": 4, "step": 20}, st, 0, 0.1)


def test_a_step_far_above_the_best_and_the_first_is_refused():
    st = Progress(first_loss=2.0)
    check_step(1.0, st, 100.0, 0.1, 1)
    check_step(1.5, st, 100.0, 0.1, 1)  # worse, within the factor
    with pytest.raises(Diverged, match=r"step 1 \(epoch 2\) has J = 500"):
        check_step(500.0, st, 100.0, 0.1, 2)


def test_non_finite_state_is_refused_before_a_checkpoint():
    good = [{"params": {"W1": np.ones(2)}, "opt": {"W1": [np.ones(2)]}}]
    check_finite_state(good, 3)
    bad_param = [{"params": {"W1": np.array([1.0, np.inf])}, "opt": {}}]
    with pytest.raises(Diverged, match="parameter W1 \\(stage 0\\) is not finite after step 3"):
        check_finite_state(bad_param, 3)
    bad_opt = [{"params": {"W1": np.ones(2)}, "opt": {"W1": [np.ones(2), np.full(2, np.inf)]}}]
    with pytest.raises(Diverged, match="optimizer state 1 of parameter W1"):
        check_finite_state(bad_opt, 3)
