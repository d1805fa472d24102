"""Evaluation: a model's mean loss (and accuracy) on samples, for training and for runs."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Predictor(Protocol):
    """Anything that maps samples to the model's outputs (an engine, on its workers)."""

    def predict(self, X: np.ndarray) -> np.ndarray: ...


def scores(o: np.ndarray, y: np.ndarray, loss: str) -> dict[str, float]:
    """Mean loss of outputs `o` against `y` (cross-entropy without the regulariser, or half the
    squared error summed over targets), and for classification the accuracy: {"loss", ...}.

    >>> scores(np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 0]), "cross_entropy")["accuracy"]
    0.5
    """
    o = o.astype(np.float64)
    if loss == "cross_entropy":
        m = o.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(o - m).sum(axis=1, keepdims=True)))[:, 0]
        nll = float(np.mean(lse - o[np.arange(len(y)), y]))
        return {"loss": nll, "accuracy": float(np.mean(o.argmax(axis=1) == y))}
    return {"loss": float(0.5 * np.mean(((o - y) ** 2).sum(axis=1)))}


def evaluate(model: Predictor, X: np.ndarray, y: np.ndarray, loss: str) -> dict[str, float]:
    """Test loss (and accuracy for classification) of `model`'s inference outputs, as the
    metrics rows name them: {"test_loss", "test_accuracy"}."""
    return {f"test_{k}": v for k, v in scores(model.predict(X), y, loss).items()}
