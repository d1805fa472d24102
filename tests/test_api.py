"""Contract of the public `gp.value_and_grad` (graphpart.engines.grad): the engine's executor.

It equals the reference (graphpart.api.value_and_grad: autodiff over the IR, or its pipelined
form) to 1e-10 relative in float64, J and every gradient, on MLPs of depth 1 to 4, every
activation, both losses, bias on and off, with weight decay; with `plan`, `stages` and
`microbatches` too. float32 parameters give float32 gradients close to the float64 reference.
The lowered program is cached per (plan, dtype), reused for equal or smaller batches and rebuilt
for larger ones, with correct results in any order of batch sizes; the caller's params and
batch are never modified, the gradients returned are fresh arrays (a later call does not
overwrite them), and non-contiguous params are read correctly. `executor="reference"` gives
exactly the reference's numbers. Bad calls raise one-line errors naming the bad value (an
unknown executor, mismatched params, too many micro-batches, a plan of another graph).
`import graphpart` does not load the engines; `gp.value_and_grad` does, on first use.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import rel_err

import graphpart as gp
from graphpart import api
from graphpart.engines import grad
from graphpart.errors import GraphpartError, PlanError
from graphpart.ir.ops import ACTIVATIONS, LOSSES

TOL = 1e-10
SIZES = {1: [6, 3], 2: [6, 7, 3], 3: [5, 8, 6, 4], 4: [7, 6, 5, 8, 3]}


def problem(sizes, activation="tanh", bias=True, loss="cross_entropy", n=9, seed=0, wd=0.05):
    g = gp.mlp(sizes, activation=activation, bias=bias, loss=loss, weight_decay=wd)
    rng = np.random.default_rng(seed)
    params = {v.name: 0.7 * rng.standard_normal(v.shape) for v in g.params}
    x = rng.standard_normal((n, sizes[0]))
    y = rng.integers(0, sizes[-1], n) if loss == "cross_entropy" else rng.random((n, sizes[-1]))
    return g, params, {"x": x, "y": y}


def assert_same(got, want, tol=TOL):
    (J, grads), (Jr, gr) = got, want
    assert abs(J - Jr) <= tol * abs(Jr)
    assert set(grads) == set(gr)
    for name in gr:
        assert grads[name].dtype == gr[name].dtype, name
        assert grads[name].shape == gr[name].shape, name
        assert rel_err(grads[name], gr[name]) <= tol, name


@pytest.mark.parametrize("depth", sorted(SIZES))
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("bias", [True, False])
def test_fast_equals_reference_float64(depth, activation, loss, bias):
    g, params, batch = problem(SIZES[depth], activation, bias, loss, seed=depth)
    assert_same(gp.value_and_grad(g, params, batch), api.value_and_grad(g, params, batch))


@pytest.mark.parametrize(
    ("stages", "microbatches"), [(1, 2), (1, 9), (2, 1), (2, 3), (3, 2), (4, 4)]
)
@pytest.mark.parametrize(
    ("activation", "bias", "loss"),
    [("relu", False, "cross_entropy"), ("sigmoid", True, "mse"), ("tanh", True, "cross_entropy")],
)
def test_pipelined_equals_reference(stages, microbatches, activation, bias, loss):
    g, params, batch = problem(SIZES[4], activation, bias, loss, seed=stages + 10 * microbatches)
    plain = api.value_and_grad(g, params, batch)
    want = api.value_and_grad(g, params, batch, stages=stages, microbatches=microbatches)
    got = gp.value_and_grad(g, params, batch, stages=stages, microbatches=microbatches)
    assert_same(got, want)
    assert_same(got, plain)
    plan = gp.partition(g, stages, "uniform")
    assert_same(gp.value_and_grad(g, params, batch, plan, microbatches=microbatches), plain)


def test_float32_params_give_float32_gradients():
    g, p64, batch = problem([20, 30, 30, 5], "relu", True, n=16, seed=3)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    J, grads = gp.value_and_grad(g, p32, batch)
    Jr, gr = api.value_and_grad(g, p64, batch)
    assert isinstance(J, float) and abs(J - Jr) <= 1e-5 * abs(Jr)
    for name in gr:
        assert grads[name].dtype == np.float32
        assert rel_err(grads[name], gr[name]) < 1e-4, name


def test_cache_reused_for_smaller_batches_rebuilt_for_larger():
    grad.clear_cache()
    g, params, _ = problem([5, 6, 3], "tanh", True, seed=4)
    rng = np.random.default_rng(4)
    chains, largest = [], 0
    for n in (8, 8, 3, 12, 5, 12):
        largest = max(largest, n)
        batch = {"x": rng.standard_normal((n, 5)), "y": rng.integers(0, 3, n)}
        assert_same(gp.value_and_grad(g, params, batch), api.value_and_grad(g, params, batch))
        (chain,) = grad._cache.values()
        chains.append(chain)
        assert chain.rows == largest
    assert chains[0] is chains[1] is chains[2]  # equal and smaller batches: the same programs
    assert chains[3] is not chains[2]  # a larger batch: rebuilt
    assert chains[3] is chains[4] is chains[5]


def test_cache_keyed_by_dtype_and_plan_and_bounded():
    grad.clear_cache()
    g, params, batch = problem([5, 6, 4, 3], "relu", True, seed=5)
    gp.value_and_grad(g, params, batch)
    gp.value_and_grad(g, {k: v.astype(np.float32) for k, v in params.items()}, batch)
    gp.value_and_grad(g, params, batch, stages=2)
    assert len(grad._cache) == 3
    for depth in (1, 2, 3, 4):
        gg, pp, bb = problem(SIZES[depth], seed=depth)
        gp.value_and_grad(gg, pp, bb)
    assert len(grad._cache) == grad.CACHE_SIZE


def test_inputs_untouched_and_results_fresh():
    g, params, batch = problem([6, 7, 3], "sigmoid", True, seed=6)
    p0 = {k: v.copy() for k, v in params.items()}
    b0 = {k: v.copy() for k, v in batch.items()}
    J1, g1 = gp.value_and_grad(g, params, batch)
    kept = {k: v.copy() for k, v in g1.items()}
    other = {k: 2 * v for k, v in params.items()}
    J2, g2 = gp.value_and_grad(g, other, batch)
    for k in params:
        assert np.array_equal(params[k], p0[k])
        assert np.array_equal(g1[k], kept[k])  # not overwritten by the second call
        assert not np.shares_memory(g1[k], g2[k])
        assert not np.shares_memory(g2[k], other[k])
    for k in batch:
        assert np.array_equal(batch[k], b0[k])
    assert J1 != J2
    assert_same((J2, g2), api.value_and_grad(g, other, batch))


def test_non_contiguous_params_and_cast_batch():
    g, params, batch = problem([6, 7, 3], "tanh", True, seed=7)
    strided = {k: np.asfortranarray(v) if v.ndim == 2 else v for k, v in params.items()}
    wide = {k: np.repeat(v, 2, axis=-1)[..., ::2] for k, v in params.items()}  # strided views
    want = api.value_and_grad(g, params, batch)
    assert_same(gp.value_and_grad(g, strided, batch), want)
    assert_same(gp.value_and_grad(g, wide, batch), want)
    as_float32 = {"x": batch["x"].astype(np.float32), "y": batch["y"].astype(np.int32)}
    assert_same(gp.value_and_grad(g, params, as_float32), api.value_and_grad(g, params, as_float32))


def test_reference_executor_is_the_reference():
    g, params, batch = problem([6, 7, 3], "relu", True, seed=8)
    for kw in ({}, {"stages": 2, "microbatches": 3}):
        J, gr = gp.value_and_grad(g, params, batch, executor="reference", **kw)
        Jr, grr = api.value_and_grad(g, params, batch, **kw)
        assert J == Jr
        assert all(np.array_equal(gr[k], grr[k]) for k in grr)


def test_threads_share_a_cached_program():
    g, params, batch = problem([6, 7, 3], "tanh", True, seed=9)
    others = [{k: (i + 1) * v for k, v in params.items()} for i in range(4)]
    want = [api.value_and_grad(g, p, batch) for p in others]
    got: list = [None] * len(others)

    def work(i: int) -> None:
        for _ in range(20):
            got[i] = gp.value_and_grad(g, others[i], batch)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(others))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, want, strict=True):
        assert_same(a, b)


def test_bad_calls_are_one_line_errors():
    g, params, batch = problem([6, 7, 3], seed=10)
    with pytest.raises(GraphpartError, match=r"executor='numba'; valid: fast, reference"):
        gp.value_and_grad(g, params, batch, executor="numba")
    with pytest.raises(GraphpartError, match=r"missing \['W2'\]"):
        gp.value_and_grad(g, {k: v for k, v in params.items() if k != "W2"}, batch)
    with pytest.raises(PlanError, match=r"microbatches=10 exceeds the batch of 9 rows"):
        gp.value_and_grad(g, params, batch, stages=2, microbatches=10)
    with pytest.raises(PlanError, match=r"microbatches=0"):
        gp.value_and_grad(g, params, batch, microbatches=0)
    other = gp.mlp([6, 7, 7, 3])
    with pytest.raises(GraphpartError, match=r"plan= partitions another graph"):
        gp.value_and_grad(g, params, batch, gp.partition(other, 2))
    with pytest.raises(GraphpartError, match=r"stages=5 exceeds"):
        gp.value_and_grad(g, params, batch, stages=5)
    assert_same(gp.value_and_grad(g, params, batch), api.value_and_grad(g, params, batch))


def test_public_name_is_the_engines_function():
    assert gp.value_and_grad is grad.value_and_grad
    assert "value_and_grad" in gp.__all__


@pytest.mark.ray  # starts a Python process
def test_import_graphpart_does_not_load_the_engines():
    code = (
        "import sys, graphpart as gp\n"
        "assert 'graphpart.engines' not in sys.modules and 'workers.program' not in sys.modules\n"
        "gp.value_and_grad\n"
        "assert 'graphpart.engines.grad' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.ray  # starts Python processes
def test_benchmark_runs_each_contender_in_its_own_process():
    from graphpart.tools.bench import value_and_grad as bench

    result = bench.run_benchmark(
        sizes=[8, 6, 3],
        batch=4,
        threads=(1,),
        repeats=2,
        warmup=0,
        rounds=1,
        contenders=("graphpart", "reference"),
    )
    res = result["results"]["1"]
    for name in ("graphpart", "reference"):
        assert len(res[name]["times_ms"]) == 2 and res[name]["median_ms"] > 0
    assert res["matmul_gflops"] > 0
    assert res["max_rel_err_vs_reference"] < 1e-5  # float32
    text = bench.format_report(result)
    assert "graphpart" in text and "reference" in text and "GFLOP/s" in text
