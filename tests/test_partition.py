"""Contract of graphpart.plan.partition (strategies "uniform" and "balanced").

`partition(graph, stages, strategy)` splits the layers into `stages` contiguous, non-empty
stages ("uniform": near-equal layer counts, remainder first; "balanced": the split minimising
the largest stage cost, per-sample FLOPs by default or `layer_costs` when given). Each stage's
sub-graph validates on its own: stage 0 reads x, stage k reads stage k-1's boundary output
(declared as an input), the last stage holds the labels and the loss. Every parameter lives in
exactly one stage, and the regulariser is split into per-stage parts s@k that together read
each weight exactly once (summing, with L, to J). Bad requests (stages > layers, non-positive
stages, unknown strategy, wrong-length layer_costs) raise PlanError naming the values.
`split_batch(n, M)` gives M contiguous near-equal non-empty row ranges covering 0..n.
`plan.stage_of()` maps every node of the full graph to a stage.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from graphpart.autodiff import forward
from graphpart.errors import PlanError
from graphpart.ir import mlp
from graphpart.plan.partition import (
    STRATEGIES,
    Plan,
    layer_flops,
    make_plan,
    op_flops,
    partition,
    split_batch,
)

STRATS = ["uniform", "balanced"]


def model(depth, bias=False, loss="cross_entropy", wd=0.1):
    sizes = [3 + (2 * i) % 5 for i in range(depth + 1)]
    return mlp(sizes, activation="tanh", bias=bias, loss=loss, weight_decay=wd)


def all_cases():
    for depth in range(1, 6):
        for k in range(1, depth + 1):
            for strategy in STRATS:
                for bias in (False, True):
                    yield depth, k, strategy, bias


CASES = list(all_cases())


def compositions(total, n):
    for cuts in itertools.combinations(range(1, total), n - 1):
        bounds = (0, *cuts, total)
        yield [b - a for a, b in itertools.pairwise(bounds)]


# -- structure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("depth", "k", "strategy", "bias"), CASES)
def test_stages_are_contiguous_non_empty_and_cover_layers(depth, k, strategy, bias):
    g = model(depth, bias)
    plan = partition(g, k, strategy)
    assert isinstance(plan, Plan)
    assert plan.k == k == len(plan.stages)
    assert plan.strategy == strategy
    assert all(len(st.layers) >= 1 for st in plan.stages)
    assert [x for st in plan.stages for x in st.layers] == g.layers
    assert plan.sizes() == [len(st.layers) for st in plan.stages]
    assert [st.index for st in plan.stages] == list(range(k))
    assert plan.graph is g


@pytest.mark.parametrize(("depth", "k", "strategy", "bias"), CASES)
def test_stage_graphs_validate_and_chain(depth, k, strategy, bias):
    g = model(depth, bias)
    plan = partition(g, k, strategy)
    prev = None
    for st in plan.stages:
        sub = st.graph
        assert sub.validate() is sub
        assert [v.name for v in sub.inputs] == [st.input]
        if st.index == 0:
            assert st.input == "x" and st.input_width == 0
        else:
            assert st.input == prev.output
            assert sub[st.input].shape == g[st.input].shape
            assert g[st.input].role == "value"  # a value of the full graph, an input here
            assert st.input_width == g[st.input].shape[1]
        if st.is_last:
            assert st.output is None and st.output_width == 0
            assert [v.name for v in sub.labels] == ["y"]
            assert sub.loss == "L" and "L" in sub and "o" in sub
            assert sub.producer(sub.output).inputs[0] == "L"
        else:
            assert st.output is not None
            assert sub.labels == [] and "L" not in sub
            last_layer = st.layers[-1]
            assert g[st.output].layer == last_layer
            assert g.consumers(st.output)[0].layer == last_layer + 1  # read by the next stage
            assert st.output_width == g[st.output].shape[1]
            assert sub.producer(st.output) is not None
        # every op of the stage's layers, and nothing else from the data path
        data_ops = [o.name for o in sub.ops if o.layer != 0]
        assert data_ops == [o.name for o in g.ops if o.layer in st.layers]
        prev = st
    assert not plan.stages[-1].output


@pytest.mark.parametrize(("depth", "k", "strategy", "bias"), CASES)
def test_every_parameter_in_exactly_one_stage(depth, k, strategy, bias):
    g = model(depth, bias)
    plan = partition(g, k, strategy)
    seen = [p for st in plan.stages for p in st.params]
    assert sorted(seen) == sorted(v.name for v in g.params)
    assert len(seen) == len(set(seen))
    for st in plan.stages:
        assert set(st.params) == {v.name for v in g.params if v.layer in st.layers}
        assert set(st.params) == {v.name for v in st.graph.params}
        assert st.param_count() == sum(int(np.prod(g[p].shape)) for p in st.params)
    assert sum(st.param_count() for st in plan.stages) == sum(
        int(np.prod(v.shape)) for v in g.params
    )


@pytest.mark.parametrize(("depth", "k", "strategy", "bias"), CASES)
def test_regulariser_parts_cover_each_weight_once(depth, k, strategy, bias):
    g = model(depth, bias, wd=0.25)
    plan = partition(g, k, strategy)
    reads = []
    for st in plan.stages:
        (reg,) = [o for o in st.graph.ops if o.op == "l2"]
        s_name = "s" if k == 1 else f"s@{st.index}"
        assert reg.output == s_name
        assert reg.attr("weight_decay") == 0.25
        assert all(st.graph[w].layer in st.layers for w in reg.inputs)
        assert not any(w.startswith("b") for w in reg.inputs)  # biases are not regularised
        reads += reg.inputs
        (obj,) = [o for o in st.graph.ops if o.op == "add"]
        assert obj.output == st.graph.output == ("J" if k == 1 else f"J@{st.index}")
        assert obj.inputs == (("L", s_name) if st.is_last else (s_name,))
    assert sorted(reads) == sorted(g.producer("s").inputs)
    assert len(reads) == len(set(reads))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_stage_objectives_sum_to_J(k, loss):
    g = model(4, bias=True, loss=loss, wd=0.3)
    plan = partition(g, k, "uniform")
    rng = np.random.default_rng(k)
    params = {v.name: rng.standard_normal(v.shape) for v in g.params}
    x = rng.standard_normal((6, g["x"].shape[1]))
    q = g["o"].shape[1]
    y = rng.integers(0, q, 6) if loss == "cross_entropy" else rng.standard_normal((6, q))
    full = forward(g, params, {"x": x, "y": y})
    total, h = 0.0, x
    for st in plan.stages:
        feed = {st.input: h, **({"y": y} if st.is_last else {})}
        vals = forward(st.graph, {p: params[p] for p in st.params}, feed, scale=1 / 6)
        total += float(vals[st.graph.output])
        if not st.is_last:
            np.testing.assert_allclose(vals[st.output], full[st.output], rtol=1e-14)
            h = vals[st.output]
    np.testing.assert_allclose(total, float(full["J"]), rtol=1e-13)


@pytest.mark.parametrize(("depth", "k", "strategy", "bias"), CASES)
def test_stage_of_covers_every_node(depth, k, strategy, bias):
    g = model(depth, bias)
    plan = partition(g, k, strategy)
    so = plan.stage_of()
    for name in [*g.names, *(o.name for o in g.ops)]:
        assert name in so, name
        assert 0 <= so[name] < k
    by_layer = {x: st.index for st in plan.stages for x in st.layers}
    for v in g.vars:
        if v.layer > 0:
            assert so[v.name] == by_layer[v.layer], v.name  # boundary values: the producer
    for o in g.ops:
        if o.layer > 0:
            assert so[o.name] == by_layer[o.layer], o.name
    for name in ("s", "J", "l2", "objective"):
        assert so[name] == k - 1


# -- strategies -----------------------------------------------------------------------------------


def test_uniform_sizes_remainder_first():
    g = model(5)
    assert partition(g, 1, "uniform").sizes() == [5]
    assert partition(g, 2, "uniform").sizes() == [3, 2]
    assert partition(g, 3, "uniform").sizes() == [2, 2, 1]
    assert partition(g, 4, "uniform").sizes() == [2, 1, 1, 1]
    assert partition(g, 5, "uniform").sizes() == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize(
    "sizes", [[20, 3, 40, 2, 30, 5, 10], [8, 64, 64, 4, 4, 4, 2], [30, 3, 3, 3, 3, 3, 40]]
)
def test_balanced_minimises_max_stage_flops(sizes, k):
    g = mlp(sizes, activation="relu", bias=True)
    lf = layer_flops(g)
    costs = [sum(lf[x]) for x in g.layers]
    plan = partition(g, k, "balanced")
    got = max(st.flops_fwd + st.flops_bwd for st in plan.stages)
    best = min(
        max(
            sum(costs[a : a + s])
            for a, s in zip(itertools.accumulate([0, *c[:-1]]), c, strict=True)
        )
        for c in compositions(len(costs), k)
    )
    assert got == best
    assert plan.layer_costs == tuple(float(c) for c in costs)
    uni = partition(g, k, "uniform")
    assert got <= max(st.flops_fwd + st.flops_bwd for st in uni.stages)


def test_balanced_differs_from_uniform_when_layers_are_uneven():
    g = mlp([64, 64, 2, 2, 2], activation="relu")  # layer 1 dominates
    assert partition(g, 2, "uniform").sizes() == [2, 2]
    assert partition(g, 2, "balanced").sizes() == [1, 3]


def test_stage_flops_are_layer_sums():
    g = mlp([6, 5, 4, 3, 2], bias=True, loss="mse")
    lf = layer_flops(g)
    plan = partition(g, 3, "uniform")
    for st in plan.stages:
        assert st.flops_fwd == sum(lf[x][0] for x in st.layers)
        assert st.flops_bwd == sum(lf[x][1] for x in st.layers)
    matmul1 = g.producer("m1")
    assert op_flops(g, matmul1, 1) == (2 * 6 * 5, 4 * 6 * 5)
    assert op_flops(g, matmul1, 8) == (8 * 2 * 6 * 5, 8 * 4 * 6 * 5)
    assert sum(lf[1]) >= 2 * 6 * 5 + 4 * 6 * 5  # layer 1 includes its matmul


@pytest.mark.parametrize(
    ("costs", "sizes"),
    [
        ([100, 1, 1, 1], [1, 3]),
        ([1, 1, 1, 100], [3, 1]),
        ([1, 1, 1, 1], [2, 2]),
        ([5, 1, 1, 5], [2, 2]),
    ],
)
def test_layer_costs_override(costs, sizes):
    g = mlp([16, 16, 16, 16, 2])
    plan = partition(g, 2, "balanced", layer_costs=costs)
    assert plan.sizes() == sizes
    assert plan.layer_costs == tuple(float(c) for c in costs)
    assert partition(g, 2, "uniform", layer_costs=costs).sizes() == [2, 2]


def test_layer_costs_wrong_length():
    g = mlp([4, 4, 4, 2])
    with pytest.raises(PlanError, match=r"layer_costs has 2 entries; the model has 3 layers"):
        partition(g, 2, "balanced", layer_costs=[1, 2])


def test_layer_costs_invalid_values():
    g = mlp([4, 4, 4, 2])
    with pytest.raises(PlanError, match=r"costs\[1\]=-1.0"):
        partition(g, 2, "balanced", layer_costs=[1, -1, 2])


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATS)
def test_more_stages_than_layers(strategy):
    g = model(3)
    with pytest.raises(PlanError, match=r"stages=4 exceeds the 3 partitionable layers.*1\.\.3"):
        partition(g, 4, strategy)
    with pytest.raises(PlanError, match=r"stages=2 exceeds the 1 partitionable layers"):
        partition(model(1), 2, strategy)


@pytest.mark.parametrize("stages", [0, -1, True, 1.5, "2"])
def test_bad_stage_count(stages):
    with pytest.raises(PlanError, match=rf"stages={stages!r}"):
        partition(model(3), stages, "uniform")


def test_unknown_strategy():
    with pytest.raises(PlanError, match=r"strategy='fastest'; valid: uniform, balanced, memory"):
        partition(model(3), 2, "fastest")
    assert set(STRATS) < set(STRATEGIES)


def test_budgets_only_for_memory_strategy():
    with pytest.raises(PlanError, match=r"budgets are only used by strategy 'memory'"):
        partition(model(3), 2, "balanced", budgets=[1e9, 1e9])


@pytest.mark.parametrize("sizes", [[1, 1], [3, 0], [4], [2, 2, -1]])
def test_make_plan_rejects_bad_sizes(sizes):
    with pytest.raises(PlanError, match=r"stage sizes .* must be positive and sum to the 3 layers"):
        make_plan(model(3), sizes)


def test_make_plan_explicit_sizes():
    g = model(4, bias=True)
    plan = make_plan(g, [1, 3])
    assert plan.strategy == "manual" and plan.sizes() == [1, 3]
    assert plan.stages[1].layers == (2, 3, 4)
    assert plan.stages[1].input == "h1"


# -- split_batch ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", list(range(1, 21)) + [97, 256])
def test_split_batch(n):
    for m in range(1, min(n, 12) + 1):
        parts = split_batch(n, m)
        assert len(parts) == m
        assert parts[0].start == 0 and parts[-1].stop == n
        for a, b in itertools.pairwise(parts):
            assert a.stop == b.start
        lengths = [p.stop - p.start for p in parts]
        assert min(lengths) >= 1
        assert max(lengths) - min(lengths) <= 1
        assert all(p.step is None for p in parts)
        rows = np.arange(n)
        np.testing.assert_array_equal(np.concatenate([rows[p] for p in parts]), rows)


def test_split_batch_one_row_each():
    assert [(p.start, p.stop) for p in split_batch(3, 3)] == [(0, 1), (1, 2), (2, 3)]


def test_split_batch_errors():
    with pytest.raises(PlanError, match=r"microbatches=9 exceeds the batch of 8 rows; use 1\.\.8"):
        split_batch(8, 9)
    with pytest.raises(PlanError, match=r"microbatches=0"):
        split_batch(8, 0)
    with pytest.raises(PlanError, match=r"microbatches=-2"):
        split_batch(8, -2)


def test_weight_gradient_flops_are_dw_and_db():
    """A stage's flops_wgrad (the W of a split backward) is 2 n_in n_out (dW) + n_out (db) per
    sample and layer, and the rest of flops_bwd (the I) is the input gradients and the
    elementwise backward."""
    g = mlp([6, 5, 4, 3], bias=True)
    plan = partition(g, 2, "uniform")
    layers = [(6, 5), (5, 4), (4, 3)]
    want = [sum(2 * i * o + o for i, o in layers[: len(plan.stages[0].layers)])]
    want.append(sum(2 * i * o + o for i, o in layers[len(plan.stages[0].layers) :]))
    assert [st.flops_wgrad for st in plan.stages] == want
    for st in plan.stages:
        assert 0 < st.flops_wgrad < st.flops_bwd
