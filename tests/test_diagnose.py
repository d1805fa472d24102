"""A diverged step's diagnosis names the first variable of the graph, in topological order
(parameters first, then each operator's output), whose value is non-finite, with its stage;
None when every value is finite."""

from __future__ import annotations

import numpy as np

from graphpart.ir import mlp
from graphpart.params import init_params
from graphpart.plan.partition import partition
from graphpart.run.diagnose import first_non_finite


def _setup(k: int = 2):
    g = mlp([4, 3, 3, 2], activation="relu")
    p = init_params(g, seed=0, dtype="float64")
    batch = {"x": np.ones((5, 4)), "y": np.zeros(5, int)}
    return partition(g, k), p, batch


def test_all_finite_is_none():
    plan, p, batch = _setup()
    assert first_non_finite(plan, p, batch) is None


def test_a_non_finite_parameter_is_named_first():
    plan, p, batch = _setup()
    p = {**p, "W2": np.full_like(p["W2"], np.nan)}
    stage = plan.stage_of()["W2"]
    assert first_non_finite(plan, p, batch) == f"parameter W2 (stage {stage})"


def test_an_overflowing_input_names_the_first_operator_it_reaches():
    plan, p, batch = _setup()
    batch = {**batch, "x": np.full((5, 4), 1e308)}  # finite, but x W1 overflows
    p = {**p, "W1": np.full_like(p["W1"], 10.0)}
    got = first_non_finite(plan, p, batch)
    first = plan.graph.ops[0]
    assert got == f"{first.output} = {first.op}({', '.join(first.inputs)}) (stage 0)", got
