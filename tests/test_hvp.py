"""Contract of graphpart.hvp (jvp, hvp by forward-over-reverse) and graphpart.plan.hvp.

In float64: H v equals central finite differences of the gradient to 1e-6 relative, with the
error falling as eps^2 for a smooth model; it equals the textbook's closed forms for the
one-hidden-layer model with an identity activation and mse (the W2 block: (1/N) V2 h^T h +
lambda V2; the W1 block and the cross terms) to 1e-10; u^T H v = v^T H u to 1e-10; the JVP
equals <grad, v>; the dense Hessian is symmetric and its columns are HVPs; the pipelined HVP
(any stages, micro-batches, GPipe or 1F1B) equals the one-process HVP to 1e-10; bad directions
are one-line GraphpartErrors naming the parameter.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphpart as gp
from graphpart.autodiff import forward, value_and_grad
from graphpart.errors import GraphpartError
from graphpart.hvp import (
    dense_hessian,
    flatten,
    forward_tangents,
    hvp,
    jvp,
    kept_bytes,
    unflatten,
    value_grad_hvp,
)
from graphpart.ir.ops import ACTIVATIONS
from graphpart.plan.hvp import pipelined_hvp
from graphpart.plan.partition import partition


def _model(act="tanh", loss="cross_entropy", bias=True, sizes=(6, 5, 4, 3), lam=1e-2, n=12):
    g = gp.mlp(list(sizes), activation=act, loss=loss, weight_decay=lam, bias=bias)
    params = gp.init_params(g, seed=0, dtype="float64")
    rng = np.random.default_rng(1)
    for k in params:  # biases start at zero; move them off it, away from relu's kink
        if k.startswith("b"):
            params[k] = rng.uniform(0.1, 0.5, params[k].shape)
    y = rng.integers(0, sizes[-1], n) if loss == "cross_entropy" else rng.standard_normal((n, 3))
    batch = {"x": rng.standard_normal((n, sizes[0])), "y": y}
    v = {k: rng.standard_normal(a.shape) for k, a in params.items()}
    return g, params, batch, v


def _fd(g, params, batch, v, eps):
    plus = value_and_grad(g, {k: params[k] + eps * v[k] for k in params}, batch)[1]
    minus = value_and_grad(g, {k: params[k] - eps * v[k] for k in params}, batch)[1]
    return flatten(g, {k: (plus[k] - minus[k]) / (2 * eps) for k in params})


def _kink_free_eps(g, params, batch, v, eps=1e-5):
    """eps small enough that no pre-activation changes sign within W +- eps v (relu's kink)."""
    values = forward(g, params, batch)
    tangents = forward_tangents(g, values, v)
    for o in g.ops:
        if o.op == "relu":
            z, dz = values[o.inputs[0]], tangents[o.inputs[0]]
            moving = dz != 0  # a z = 0 that does not move stays at relu(0) = 0
            eps = min(eps, 0.1 * float(np.min(np.abs(z[moving]) / np.abs(dz[moving]))))
    return eps


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("bias", [True, False])
def test_hvp_matches_finite_differences(act, loss, bias):
    g, params, batch, v = _model(act, loss, bias)
    got = flatten(g, hvp(g, params, batch, v))
    eps = _kink_free_eps(g, params, batch, v)
    assert eps > 1e-8  # else round-off would dominate: pick another seed
    assert _rel(_fd(g, params, batch, v, eps), got) < 1e-6


def test_finite_difference_error_falls_as_eps_squared():
    g, params, batch, v = _model("tanh", "cross_entropy")
    got = flatten(g, hvp(g, params, batch, v))
    e1 = _rel(_fd(g, params, batch, v, 2e-2), got)
    e2 = _rel(_fd(g, params, batch, v, 1e-2), got)
    assert 3.5 < e1 / e2 < 4.5  # halving eps quarters the error: the error is the method's


def _textbook(n=20, d=5, hdim=4, q=3, lam=0.1):
    """One hidden layer, identity activation, no bias, mse: o = x W1^T W2^T."""
    g = gp.mlp([d, hdim, q], activation="identity", loss="mse", weight_decay=lam, bias=False)
    params = gp.init_params(g, seed=3, dtype="float64")
    rng = np.random.default_rng(4)
    batch = {"x": rng.standard_normal((n, d)), "y": rng.standard_normal((n, q))}
    return g, params, batch, lam


def test_closed_form_w2_block():
    g, params, batch, lam = _textbook()
    W1 = params["W1"]
    x = batch["x"]
    n = len(x)
    h = x @ W1.T
    V2 = np.random.default_rng(5).standard_normal(params["W2"].shape)
    v = {"W1": np.zeros_like(W1), "W2": V2}
    hv = hvp(g, params, batch, v)
    assert _rel(hv["W2"], V2 @ h.T @ h / n + lam * V2) < 1e-10
    # the cross block: d/dt dJ/dW1 along W2 + t V2
    W2 = params["W2"]
    r = h @ W2.T - batch["y"]
    cross = (V2.T @ r.T @ x + W2.T @ (h @ V2.T).T @ x) / n
    assert _rel(hv["W1"], cross) < 1e-10


def test_closed_form_w1_block():
    g, params, batch, lam = _textbook()
    W2 = params["W2"]
    x = batch["x"]
    n = len(x)
    V1 = np.random.default_rng(6).standard_normal(params["W1"].shape)
    v = {"W1": V1, "W2": np.zeros_like(W2)}
    hv = hvp(g, params, batch, v)
    assert _rel(hv["W1"], W2.T @ W2 @ V1 @ x.T @ x / n + lam * V1) < 1e-10


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_symmetry(act, loss):
    g, params, batch, v = _model(act, loss)
    rng = np.random.default_rng(7)
    u = {k: rng.standard_normal(a.shape) for k, a in params.items()}
    uHv = flatten(g, u) @ flatten(g, hvp(g, params, batch, v))
    vHu = flatten(g, v) @ flatten(g, hvp(g, params, batch, u))
    assert abs(uHv - vHu) <= 1e-10 * abs(uHv)


def test_dense_hessian_is_symmetric_and_made_of_hvps():
    g, params, batch, v = _model("sigmoid", "cross_entropy", sizes=(4, 3, 2))
    H = dense_hessian(g, params, batch)
    assert np.abs(H - H.T).max() <= 1e-10 * np.abs(H).max()
    assert _rel(H @ flatten(g, v), flatten(g, hvp(g, params, batch, v))) < 1e-10


def test_jvp_is_the_directional_derivative():
    g, params, batch, v = _model("tanh", "mse")
    J, dJ = jvp(g, params, batch, v)
    J0, grads = value_and_grad(g, params, batch)
    assert J == J0
    assert abs(dJ - flatten(g, grads) @ flatten(g, v)) <= 1e-12 * abs(dJ)


def test_value_grad_hvp_gives_the_gradient_too():
    g, params, batch, v = _model("relu", "cross_entropy")
    J, grads, _ = value_grad_hvp(g, params, batch, v)
    J0, g0 = value_and_grad(g, params, batch)
    assert J == J0
    for k in g0:
        np.testing.assert_array_equal(grads[k], g0[k])


@pytest.mark.parametrize("stages", [1, 2, 3, 4])
@pytest.mark.parametrize("microbatches", [1, 3, 4])
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipelined_equals_one_process(stages, microbatches, schedule):
    g, params, batch, v = _model("tanh", "cross_entropy", sizes=(6, 5, 5, 4, 3))
    J, grads, hv = value_grad_hvp(g, params, batch, v)
    plan = partition(g, stages)
    J2, grads2, hv2 = pipelined_hvp(plan, params, batch, v, microbatches, schedule)
    assert abs(J - J2) <= 1e-10 * abs(J)
    assert _rel(flatten(g, grads2), flatten(g, grads)) < 1e-10
    assert _rel(flatten(g, hv2), flatten(g, hv)) < 1e-10


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_pipelined_equals_one_process_across_models(act, loss):
    g, params, batch, v = _model(act, loss, bias=False, sizes=(6, 5, 4, 3))
    hv = flatten(g, hvp(g, params, batch, v))
    _, _, hv2 = pipelined_hvp(partition(g, 3), params, batch, v, 5, "1f1b")
    assert _rel(flatten(g, hv2), hv) < 1e-10


def test_flatten_round_trip_and_errors():
    g, params, _, v = _model()
    back = unflatten(g, flatten(g, v))
    for k in v:
        np.testing.assert_array_equal(back[k], v[k])
    with pytest.raises(GraphpartError, match=r"vector has shape \(3,\)"):
        unflatten(g, np.zeros(3))


def test_bad_directions_are_one_line_errors():
    g, params, batch, v = _model()
    with pytest.raises(GraphpartError, match=r"missing \['W1'\]"):
        hvp(g, params, batch, {k: a for k, a in v.items() if k != "W1"})
    with pytest.raises(GraphpartError, match=r"direction\['W2'\] has shape \(2,\)"):
        hvp(g, params, batch, {**v, "W2": np.zeros(2)})
    with pytest.raises(GraphpartError, match=r"direction is a ndarray"):
        hvp(g, params, batch, flatten(g, v))


def test_kept_bytes_counts_the_tangents_a_backward_reads():
    relu = gp.mlp([6, 5, 3], activation="relu", bias=False)
    tanh = gp.mlp([6, 5, 3], activation="tanh", bias=False)
    # gradient keeps x, W-free activations h1, logits o (and labels); relu's HVP adds dh1 (read by
    # the matmul's vjp_jvp) and do (the loss's); tanh's the same tensors (dh1 serves both)
    gk, hk = kept_bytes(relu, 10, 8)
    assert gk == 8 * (10 * 6 + 10 * 5 + 10 * 3 + 10)
    assert hk == gk + 8 * (10 * 5 + 10 * 3)
    assert kept_bytes(tanh, 10, 8) == (gk, hk)
