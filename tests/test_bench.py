"""Tests for graphpart.tools.bench, the training-step benchmark.

Contract:
- run_step_benchmark on a tiny MLP returns every documented key, with positive finite times
  for every contender it ran (PyTorch only when importable), FLOP count and matmul rate;
  format_report renders it and `main([... "--json"])` prints it as JSON.
- step_flops counts forward 2*B*sum(n_in*n_out) plus backward twice that less the first
  layer's dx.
- The hand-written NumPy baseline computes the same thing as graphpart: in float64 its loss
  and gradients equal graphpart's value_and_grad, and its parameters after optimizer steps
  (Adam, SGD with momentum) equal graphpart's, to 1e-10; so does PyTorch's step when installed.
No timing is asserted: the machine's speed is not under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from graphpart.tools import bench
from graphpart.tools.machine import cores

TINY = (20, 16, 16, 4)


def _data(sizes, batch, dtype="float64", seed=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch).astype(np.int64)
    return x, y


def _timing_ok(r: dict) -> None:
    for key in ("median_ms", "best_ms", "mean_ms", "samples_per_s"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["best_ms"] <= r["median_ms"]
    assert all(t > 0 for t in r["times_ms"])


@pytest.mark.ray
def test_tiny_benchmark_returns_every_key():
    res = bench.run_step_benchmark(
        TINY, batch=8, repeats=2, warmup=1, matmul_n=64, matmul_repeats=1, pause=0.0
    )
    assert set(res) == {
        "config",
        "env",
        "flops_per_step",
        "matmul",
        "step_matmuls",
        "cases",
        "headline",
        "startup",
    }
    assert res["flops_per_step"] == bench.step_flops(TINY, 8) > 0
    assert res["matmul"]["gflops"] > 0 and res["matmul"]["floor_ms"] > 0
    assert res["step_matmuls"]["best_ms"] > 0
    assert res["config"]["threads"] == cores() >= 1  # the default: every usable core
    for key in ("numpy", "numba", "cpu", "cores", "blas", "python"):
        assert key in res["env"]
    has_torch = res["env"]["torch"] is not None
    assert [(c["optimizer"], c["bias"]) for c in res["cases"]] == [
        ("adam", True),
        ("adam", False),
        ("sgd", True),
        ("sgd", False),
    ]
    assert res["headline"] is res["cases"][0]
    for c in res["cases"]:
        for name in ("graphpart", "numpy"):
            _timing_ok(c[name])
            assert set(c[name]["phases_median_ms"]) == {"forward", "backward", "update", "other"}
        assert (c["torch"] is not None) == has_torch
        if has_torch:
            _timing_ok(c["torch"])
            assert c["ratio_torch"] > 0
        else:
            assert c["ratio_torch"] is None
        for key in (
            "ratio_numpy",
            "ratio_numpy_best",
            "ratio_numpy_paired",
            "peak_fraction",
            "peak_fraction_best",
            "graphpart_build_s",
            "graphpart_first_step_s",
        ):
            assert math.isfinite(c[key]) and c[key] > 0, key
    text = bench.format_report(res)
    assert "graphpart" in text and "numpy" in text and "GFLOP/s" in text


@pytest.mark.ray
def test_main_json(capsys):
    assert (
        bench.main(
            [
                "--sizes",
                "6,5,3",
                "--batch",
                "4",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--matmul-n",
                "32",
                "--optimizers",
                "sgd",
                "--bias",
                "no",
                "--no-torch",
                "--pause",
                "0",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["config"]["sizes"] == [6, 5, 3]
    assert len(res["cases"]) == 1 and res["cases"][0]["torch"] is None
    # a leading "--" (what `graphpart bench -- --sizes ...` passes through) is accepted
    assert (
        bench.main(
            [
                "--",
                "--sizes",
                "6,3",
                "--batch",
                "2",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--matmul-n",
                "16",
                "--optimizers",
                "adam",
                "--bias",
                "yes",
                "--no-torch",
                "--pause",
                "0",
            ]
        )
        == 0
    )
    assert "graphpart" in capsys.readouterr().out


def test_step_flops():
    fwd = 2 * 256 * (784 * 1024 + 1024 * 1024 + 1024 * 10)
    assert bench.step_flops([784, 1024, 1024, 10], 256) == 3 * fwd - 2 * 256 * 784 * 1024
    assert bench.step_flops([3, 2], 5) == 2 * 5 * 6 * 2  # one layer: forward + dW, no dx


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "identity"])
@pytest.mark.parametrize("bias", [True, False])
def test_numpy_gradients_equal_graphpart(activation, bias):
    x, y = _data(TINY, 8)
    params = bench.init_mlp_params(TINY, activation, bias, "float64")
    eng = bench.make_graphpart(params, TINY, 8, activation, bias, "adam")
    j, grads = eng.value_and_grad(x, y)
    loss, ref = bench.NumpyMLP(params, activation, bias, "adam").loss_and_grads(x, y)
    assert loss == pytest.approx(j, rel=1e-12)
    assert set(ref) == set(grads) == set(params)
    for k in params:
        np.testing.assert_allclose(ref[k], grads[k], rtol=1e-10, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("bias", [True, False])
def test_numpy_step_equals_graphpart(optimizer, bias):
    x, y = _data(TINY, 8)
    params = bench.init_mlp_params(TINY, "relu", bias, "float64")
    eng = bench.make_graphpart(params, TINY, 8, "relu", bias, optimizer)
    ref = bench.NumpyMLP(params, "relu", bias, optimizer)
    for _ in range(3):  # several steps: momentum / Adam state and bias corrections
        r = eng.step(x, y)
        loss = ref.step(x, y)
        assert loss == pytest.approx(r.L, rel=1e-12)
        got = eng.get_params()
        for k in params:
            np.testing.assert_allclose(ref.p[k], got[k], rtol=1e-10, atol=1e-10, err_msg=k)
    assert any(not np.allclose(params[k], got[k]) for k in params)  # it did train


@pytest.mark.ray  # slow lane: importing torch alone takes seconds
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_torch_step_equals_numpy(optimizer):
    torch = pytest.importorskip("torch")
    x, y = _data(TINY, 8)
    params = bench.init_mlp_params(TINY, "relu", True, "float64")
    step, model = bench.make_torch_step(params, TINY, "relu", True, optimizer, x, y)
    ref = bench.NumpyMLP(params, "relu", True, optimizer)
    for _ in range(3):
        step()
        ref.step(x, y)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    for i, lin in enumerate(linears, 1):
        np.testing.assert_allclose(
            lin.weight.detach().numpy(), ref.p[f"W{i}"], rtol=1e-10, atol=1e-10
        )
        np.testing.assert_allclose(
            lin.bias.detach().numpy(), ref.p[f"b{i}"], rtol=1e-10, atol=1e-10
        )


@pytest.mark.ray
def test_measure_startup_fresh_processes():
    runs = bench.measure_startup(TINY, batch=8, runs=2)
    assert len(runs) == 2
    for r in runs:
        for key in ("import_s", "build_s", "first_step_s", "second_step_s", "process_s"):
            assert math.isfinite(r[key]) and r[key] > 0, key
