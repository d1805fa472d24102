"""Contract of graphpart.autodiff, the single-process reference (oracle).

`value_and_grad(graph, params, batch)` returns J and dJ/dW for every parameter; the gradients
equal central finite differences (float64, 1e-6 relative) on MLPs of depth 1 to 4, with and
without bias, for every activation and both losses, with weight decay. On the textbook network
(one hidden layer, no bias, relu, cross-entropy) they equal the closed forms
dW2 = do^T h + lambda W2 and dW1 = dz^T x + lambda W1 (batch-major), with do = (p - onehot y)/B
and dz = (do W2) * relu'(z), and J = L + s with s = lambda/2 (||W1||^2 + ||W2||^2). `forward`
returns every node's value by name. float32 parameters give float32 gradients close to the
float64 ones. Bad inputs (missing/extra/mis-shaped/mixed-dtype params, mis-shaped batches,
float labels for cross-entropy) raise GraphpartError. With a plan, `stages=K` or
`microbatches=M`, the pipelined computation gives the same J and gradients (1e-12 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rel_err

from graphpart.api import value_and_grad
from graphpart.autodiff import backward, check_batch, check_params, forward
from graphpart.errors import GraphpartError
from graphpart.ir import mlp
from graphpart.ir.ops import ACTIVATIONS, LOSSES
from graphpart.plan.partition import partition

WD = 0.07
SIZES = {  # depth -> sizes (widths 3-5)
    1: [4, 3],
    2: [4, 5, 3],
    3: [3, 5, 4, 3],
    4: [5, 4, 3, 5, 3],
}


def make_batch(rng, graph, n):
    d = graph["x"].shape[1]
    q = graph["o"].shape[1]
    x = rng.standard_normal((n, d))
    if graph.get_info("loss") == "cross_entropy":
        y = rng.integers(0, q, n)
    else:
        y = rng.standard_normal((n, q))
    return {"x": x, "y": y}


def make_params(rng, graph, dtype=np.float64):
    return {v.name: (0.8 * rng.standard_normal(v.shape)).astype(dtype) for v in graph.params}


def min_abs_preactivation(graph, params, batch):
    vals = forward(graph, params, batch)
    zs = [vals[o.inputs[0]] for o in graph.ops if o.op in ACTIVATIONS]
    return min((float(np.abs(z).min()) for z in zs), default=np.inf)


def setup(sizes, activation, bias, loss, seed, n=5, wd=WD):
    """Graph, params and batch; for relu, a seed whose pre-activations avoid the kink."""
    graph = mlp(sizes, activation=activation, bias=bias, loss=loss, weight_decay=wd)
    for attempt in range(50):
        rng = np.random.default_rng([seed, attempt])
        params = make_params(rng, graph)
        if bias:  # non-zero biases so their gradients matter
            for v in graph.params:
                if v.name.startswith("b"):
                    params[v.name] = rng.standard_normal(v.shape)
        batch = make_batch(rng, graph, n)
        if activation != "relu" or min_abs_preactivation(graph, params, batch) > 1e-3:
            return graph, params, batch
    raise AssertionError("no kink-free draw found")


def numeric_grad(graph, params, batch, eps=1e-6):
    out = {}
    for name, w in params.items():
        g = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            vals = []
            for sign in (1.0, -1.0):
                p = {k: v.copy() for k, v in params.items()}
                p[name][idx] += sign * eps
                vals.append(float(forward(graph, p, batch)["J"]))
            g[idx] = (vals[0] - vals[1]) / (2 * eps)
        out[name] = g
    return out


# -- finite differences ---------------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_gradients_match_finite_differences(depth, bias, activation, loss):
    graph, params, batch = setup(SIZES[depth], activation, bias, loss, seed=depth)
    J, grads = value_and_grad(graph, params, batch)
    assert set(grads) == set(params)
    assert np.isclose(J, float(forward(graph, params, batch)["J"]), rtol=1e-15)
    fd = numeric_grad(graph, params, batch)
    for name in params:
        assert grads[name].shape == params[name].shape
        assert grads[name].dtype == np.float64
        assert rel_err(grads[name], fd[name]) < 1e-6, (name, grads[name], fd[name])


def test_value_and_grad_does_not_modify_inputs():
    graph, params, batch = setup(SIZES[3], "tanh", True, "cross_entropy", seed=9)
    p0 = {k: v.copy() for k, v in params.items()}
    b0 = {k: v.copy() for k, v in batch.items()}
    value_and_grad(graph, params, batch)
    value_and_grad(graph, params, batch, stages=2, microbatches=2)
    for k in p0:
        np.testing.assert_array_equal(params[k], p0[k])
    for k in b0:
        np.testing.assert_array_equal(batch[k], b0[k])


# -- the textbook network in closed form ----------------------------------------------------------


def test_closed_forms_one_hidden_layer():
    lam = 0.3
    graph = mlp([4, 5, 3], activation="relu", bias=False, loss="cross_entropy", weight_decay=lam)
    rng = np.random.default_rng(42)
    params = make_params(rng, graph)
    batch = make_batch(rng, graph, 6)
    v = forward(graph, params, batch)
    assert set(v) == set(graph.names)
    x, y, W1, W2 = batch["x"], batch["y"], params["W1"], params["W2"]
    B = len(x)
    z, h, o = v["z1"], v["h1"], v["o"]
    np.testing.assert_allclose(z, x @ W1.T, rtol=1e-14)
    np.testing.assert_allclose(h, np.maximum(z, 0), rtol=1e-14)
    np.testing.assert_allclose(o, h @ W2.T, rtol=1e-14)
    p = np.exp(o - o.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(3)[y]
    do = (p - onehot) / B
    dz = (do @ W2) * (z > 0)
    J, grads = value_and_grad(graph, params, batch)
    np.testing.assert_allclose(grads["W2"], do.T @ h + lam * W2, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["W1"], dz.T @ x + lam * W1, rtol=1e-12, atol=1e-15)
    L = -np.mean(np.log(p[np.arange(B), y]))
    s = lam / 2 * (np.sum(W1**2) + np.sum(W2**2))
    np.testing.assert_allclose(float(v["L"]), L, rtol=1e-13)
    np.testing.assert_allclose(float(v["s"]), s, rtol=1e-13)
    np.testing.assert_allclose(J, L + s, rtol=1e-13)


def test_backward_exposes_intermediate_cotangents():
    lam = 0.1
    graph = mlp([4, 5, 3], activation="tanh", weight_decay=lam)
    rng = np.random.default_rng(43)
    params = make_params(rng, graph)
    batch = make_batch(rng, graph, 5)
    v = forward(graph, params, batch)
    gr = backward(graph, v, {"J": np.float64(1.0)})
    assert gr["L"] == 1.0 and gr["s"] == 1.0  # dJ/dL = dJ/ds = 1
    np.testing.assert_allclose(gr["h1"], gr["o"] @ params["W2"], rtol=1e-14)
    np.testing.assert_allclose(gr["z1"], gr["h1"] * (1 - v["h1"] ** 2), rtol=1e-14)
    np.testing.assert_allclose(gr["x"], gr["z1"] @ params["W1"], rtol=1e-14)
    assert "y" not in gr  # labels get no cotangent


@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("bias", [False, True])
def test_objective_is_loss_plus_regulariser(lam, bias):
    graph = mlp([4, 5, 6, 3], activation="sigmoid", bias=bias, loss="mse", weight_decay=lam)
    rng = np.random.default_rng(44)
    params = make_params(rng, graph)
    if bias:
        params["b1"] = rng.standard_normal(5)  # biases are not regularised
    batch = make_batch(rng, graph, 4)
    v = forward(graph, params, batch)
    s = lam / 2 * sum(np.sum(params[w] ** 2) for w in ("W1", "W2", "W3"))
    np.testing.assert_allclose(float(v["s"]), s, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(float(v["J"]), float(v["L"]) + float(v["s"]), rtol=1e-15)
    L = 0.5 * np.sum((v["o"] - batch["y"]) ** 2) / 4
    np.testing.assert_allclose(float(v["L"]), L, rtol=1e-13)
    # the gradient splits the same way: J's gradient minus the data loss's is lambda W
    _, gJ = value_and_grad(graph, params, batch)
    gL = backward(graph, v, {"L": np.float64(1.0)})
    for name in params:
        reg = lam * params[name] if name.startswith("W") else 0.0
        np.testing.assert_allclose(gJ[name] - gL[name], reg, atol=1e-13)


def test_forward_scale_overrides_loss_scale():
    graph = mlp([4, 3, 2], loss="mse")
    rng = np.random.default_rng(45)
    params, batch = make_params(rng, graph), make_batch(rng, graph, 6)
    a = float(forward(graph, params, batch)["L"])
    b = float(forward(graph, params, batch, scale=1.0)["L"])
    np.testing.assert_allclose(b, 6 * a, rtol=1e-14)


# -- dtypes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_float32(activation, loss):
    graph, p64, batch = setup(SIZES[3], activation, True, loss, seed=5, n=6)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    J64, g64 = value_and_grad(graph, {k: v.astype(np.float64) for k, v in p32.items()}, batch)
    J32, g32 = value_and_grad(graph, p32, batch)
    v32 = forward(graph, p32, batch)
    for name in ("x", "z1", "h1", "o"):
        assert v32[name].dtype == np.float32, name
    if loss == "mse":
        assert v32["y"].dtype == np.float32
    else:
        assert v32["y"].dtype == np.int64
    assert isinstance(J32, float)
    assert abs(J32 - J64) / abs(J64) < 1e-4
    for name in p32:
        assert g32[name].dtype == np.float32, name
        assert rel_err(g32[name], g64[name]) < 1e-4, name
    J, g = value_and_grad(graph, p32, batch, stages=3, microbatches=2)
    assert all(a.dtype == np.float32 for a in g.values())
    assert abs(J - J64) / abs(J64) < 1e-4


def test_check_params_returns_dtype():
    graph = mlp([4, 3, 2])
    rng = np.random.default_rng(0)
    assert check_params(graph, make_params(rng, graph)) == np.float64
    assert check_params(graph, make_params(rng, graph, np.float32)) == np.float32


def test_check_batch_casts_inputs():
    graph = mlp([4, 3, 2])
    out = check_batch(
        graph,
        {"x": np.ones((3, 4), np.int32), "y": np.array([0, 1, 1], np.int8)},
        np.dtype(np.float32),
    )
    assert out["x"].dtype == np.float32 and out["y"].dtype == np.int64
    assert out["x"].flags.c_contiguous


# -- bad inputs -----------------------------------------------------------------------------------


@pytest.fixture
def good():
    graph = mlp([4, 3, 2], bias=True, weight_decay=0.1)
    rng = np.random.default_rng(1)
    return graph, make_params(rng, graph), make_batch(rng, graph, 5)


def test_missing_param(good):
    graph, params, batch = good
    del params["W2"]
    with pytest.raises(GraphpartError, match=r"missing \['W2'\], unexpected none"):
        value_and_grad(graph, params, batch)


def test_extra_param(good):
    graph, params, batch = good
    params["W9"] = np.zeros((2, 2))
    with pytest.raises(GraphpartError, match=r"missing none, unexpected \['W9'\]"):
        value_and_grad(graph, params, batch)


def test_wrong_param_shape(good):
    graph, params, batch = good
    params["W1"] = params["W1"].T.copy()
    with pytest.raises(GraphpartError, match=r"param 'W1' has shape \(4, 3\).*expects \(3, 4\)"):
        value_and_grad(graph, params, batch)
    params["W1"] = params["W1"].T.copy()
    params["b2"] = np.zeros((1, 2))
    with pytest.raises(GraphpartError, match=r"param 'b2' has shape \(1, 2\)"):
        forward(graph, params, batch)


@pytest.mark.parametrize(
    "dtypes", [("float32", "float64"), ("int64", "int64"), ("float16", "float16")]
)
def test_bad_param_dtypes(good, dtypes):
    graph, params, batch = good
    params = {k: v.astype(dtypes[i % 2]) for i, (k, v) in enumerate(params.items())}
    with pytest.raises(GraphpartError, match=r"dtypes.*float32, float64"):
        value_and_grad(graph, params, batch)


@pytest.mark.parametrize(
    ("key", "value", "msg"),
    [
        ("x", np.zeros((5, 3)), r"batch\['x'\] has shape \(5, 3\).*\('B', 4\)"),
        ("x", np.zeros(5), r"batch\['x'\] has shape \(5,\)"),
        ("x", np.zeros((5, 4, 1)), r"batch\['x'\] has shape \(5, 4, 1\)"),
        ("y", np.zeros((5, 2), np.int64), r"batch\['y'\] has shape \(5, 2\)"),
        ("y", np.zeros(4, np.int64), r"batch\['y'\] has 4 rows, other arrays 5"),
        ("y", np.zeros(5), r"batch\['y'\] has dtype float64; labels are integers"),
        ("y", np.array([0.0, 1.0, 1.0, 0.0, 1.0], np.float32), r"dtype float32"),
    ],
)
def test_bad_batch(good, key, value, msg):
    graph, params, batch = good
    batch[key] = value
    with pytest.raises(GraphpartError, match=msg):
        value_and_grad(graph, params, batch)
    with pytest.raises(GraphpartError, match=msg):
        value_and_grad(graph, params, batch, stages=2, microbatches=2)


def test_missing_batch_key(good):
    graph, params, batch = good
    del batch["y"]
    with pytest.raises(GraphpartError, match=r"batch has no 'y'"):
        value_and_grad(graph, params, batch)


def test_mse_targets_must_match_outputs():
    graph = mlp([4, 3, 2], loss="mse")
    rng = np.random.default_rng(2)
    params = make_params(rng, graph)
    with pytest.raises(GraphpartError, match=r"batch\['y'\] has shape \(5,\)"):
        value_and_grad(graph, params, {"x": np.zeros((5, 4)), "y": np.zeros(5)})
    with pytest.raises(GraphpartError, match=r"batch\['y'\] has shape \(5, 3\)"):
        value_and_grad(graph, params, {"x": np.zeros((5, 4)), "y": np.zeros((5, 3))})


# -- pipelined computation equals the plain one ---------------------------------------------------


@pytest.mark.parametrize("strategy", ["uniform", "balanced"])
@pytest.mark.parametrize("microbatches", [1, 2, 3])
@pytest.mark.parametrize("stages", [1, 2, 3, 4])
@pytest.mark.parametrize(
    ("activation", "bias", "loss"),
    [("relu", False, "cross_entropy"), ("tanh", True, "mse"), ("sigmoid", True, "cross_entropy")],
)
def test_pipelined_equals_plain(stages, microbatches, strategy, activation, bias, loss):
    graph, params, batch = setup([5, 4, 3, 5, 3], activation, bias, loss, seed=11, n=7)
    J, grads = value_and_grad(graph, params, batch)
    plan = partition(graph, stages, strategy)
    assert plan.k == stages
    for Jp, gp in (
        value_and_grad(graph, params, batch, plan, microbatches=microbatches),
        value_and_grad(graph, params, batch, plan=plan, microbatches=microbatches),
    ):
        assert abs(Jp - J) <= 1e-12 * abs(J)
        assert set(gp) == set(grads)
        for name in grads:
            assert gp[name].dtype == grads[name].dtype
            assert rel_err(gp[name], grads[name]) < 1e-12, name
    Js, gs = value_and_grad(graph, params, batch, stages=stages, microbatches=microbatches)
    assert abs(Js - J) <= 1e-12 * abs(J)
    for name in grads:
        assert rel_err(gs[name], grads[name]) < 1e-12, name


def test_microbatches_alone_use_one_stage():
    graph, params, batch = setup([5, 4, 3], "tanh", True, "cross_entropy", seed=12, n=6)
    J, grads = value_and_grad(graph, params, batch)
    Jm, gm = value_and_grad(graph, params, batch, microbatches=6)
    assert abs(Jm - J) <= 1e-12 * abs(J)
    for name in grads:
        assert rel_err(gm[name], grads[name]) < 1e-12, name


def test_pipelined_too_many_microbatches():
    from graphpart.errors import PlanError

    graph, params, batch = setup([5, 4, 3], "tanh", False, "cross_entropy", seed=13, n=4)
    with pytest.raises(PlanError, match=r"microbatches=5 exceeds the batch of 4 rows"):
        value_and_grad(graph, params, batch, stages=2, microbatches=5)


@pytest.mark.parametrize("bad", [-1, 2])
def test_out_of_range_labels(good, bad):
    graph, params, batch = good  # 2 classes
    batch["y"] = np.array([0, 1, bad, 0, 1])
    with pytest.raises(GraphpartError, match=rf"{bad}"):
        value_and_grad(graph, params, batch)


def test_empty_batch(good):
    graph, params, batch = good
    with pytest.raises(GraphpartError):
        value_and_grad(graph, params, {"x": np.zeros((0, 4)), "y": np.zeros(0, np.int64)})
