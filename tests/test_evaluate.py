"""Evaluation (graphpart.run.evaluate): one definition of a model's test figures.

Contract: `scores(o, y, "cross_entropy")` is the mean softmax cross-entropy of the logits o
against the labels y (no regulariser) and the share of rows whose argmax is the label;
`scores(o, y, "mse")` is half the squared error summed over targets, averaged over rows;
`evaluate(model, X, y, loss)` is `scores` of `model.predict(X)` named as metrics rows name them
(test_loss, test_accuracy). Training (graphpart.run.trainer) and `Run.evaluate`
(graphpart.run.session) both use it.
"""

from __future__ import annotations

import numpy as np
import pytest

from graphpart.run import session, trainer
from graphpart.run.evaluate import evaluate, scores


def test_cross_entropy_and_accuracy_by_hand():
    o = np.array([[0.0, 0.0], [3.0, 1.0], [0.0, 2.0]])
    y = np.array([0, 0, 0])
    got = scores(o, y, "cross_entropy")
    p = np.exp(o) / np.exp(o).sum(axis=1, keepdims=True)
    assert got["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(3), y])), rel=1e-12)
    assert got["accuracy"] == pytest.approx(2 / 3)  # row 0 ties: argmax picks class 0


def test_large_logits_stay_finite():
    got = scores(np.array([[1e4, -1e4]], dtype=np.float32), np.array([1]), "cross_entropy")
    assert got["loss"] == pytest.approx(2e4, rel=1e-6)


def test_mse_is_half_the_squared_error_summed_over_targets():
    o = np.array([[1.0, 2.0], [0.0, 0.0]])
    y = np.array([[0.0, 0.0], [1.0, 1.0]])
    assert scores(o, y, "mse") == {"loss": pytest.approx(0.5 * (5.0 + 2.0) / 2)}


def test_evaluate_names_the_figures_as_metrics_rows_do():
    class Model:
        def predict(self, X):
            return np.eye(2)[X[:, 0].astype(int)]

    X = np.array([[0.0], [1.0], [1.0]])
    got = evaluate(Model(), X, np.array([0, 1, 0]), "cross_entropy")
    assert sorted(got) == ["test_accuracy", "test_loss"]
    assert got["test_accuracy"] == pytest.approx(2 / 3)


def test_training_and_runs_share_the_one_definition():
    assert trainer.evaluate is evaluate
    assert session.scores is scores
