"""Contract of workers.kernels.cpu.

Every kernel agrees with a plain NumPy reference (computed in float64) to within a few ulp of
its dtype, for float32 and float64 and odd shapes (7x13, 1x1, 256x10), writing only into the
arrays it is given, including the documented aliasing cases. KERNELS holds every kernel key the
op registry names, and every activation of the registry, called through it as the registry's
`kernels` say, agrees with the registry's reference forward and VJP. Activation codes are
IDENTITY=0, RELU=1, SIGMOID=2, TANH=3 (ACTIVATIONS maps names to them); act_backward takes
the derivative from the output h. Losses return scale * sum, accumulated in float64;
softmax is stable for large logits and NaN propagates. sgd_update / adam_update follow
torch.optim.SGD / torch.optim.Adam on 1-D (.reshape(-1)) views. Bad activation codes, labels
out of range and an Adam step below 1 raise ValueError. The kernels are nogil and serial,
allocate nothing beyond wrapping their array arguments, and a second process loads them from
the on-disk cache instead of compiling.
"""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphpart.ir.ops import ACTIVATIONS, REGISTRY
from workers.kernels import cpu

DTYPES = [np.float32, np.float64]
SHAPES = [(7, 13), (1, 1), (256, 10)]
ACTS = [cpu.IDENTITY, cpu.RELU, cpu.SIGMOID, cpu.TANH]
ROOT = Path(__file__).resolve().parents[1]


def tol(dtype, ulps=4):
    eps = np.finfo(dtype).eps
    return {"rtol": ulps * eps, "atol": ulps * eps}


def rand(shape, dtype, seed, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def phi_ref(z, act):
    z = z.astype(np.float64)
    return [z, np.maximum(z, 0.0), 1.0 / (1.0 + np.exp(-z)), np.tanh(z)][act]


def xent_ref(o, y, scale):
    o = o.astype(np.float64)
    mx = o.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(o - mx).sum(axis=1))
    probs = np.exp(o - lse[:, None])
    return probs, scale * float(np.sum(lse - o[np.arange(len(y)), y]))


def test_activation_codes():
    assert (cpu.IDENTITY, cpu.RELU, cpu.SIGMOID, cpu.TANH) == (0, 1, 2, 3)
    assert cpu.ACTIVATIONS == {"identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_add(dtype, shape):
    m, b = rand(shape, dtype, 0), rand(shape[1], dtype, 1)
    out = np.full_like(m, np.nan)
    cpu.bias_add(m, b, out)
    np.testing.assert_array_equal(out, m + b)
    expected = m + b
    cpu.bias_add(m, b, m)  # aliased
    np.testing.assert_array_equal(m, expected)


def run(call, arrays):
    """Call the kernel a registry Call names (graphpart.ir.calls), its arguments by role."""
    return cpu.KERNELS[call.key](*[arrays[role] for role in call.args])


def test_the_table_holds_every_kernel_the_registry_names():
    named = {key for d in REGISTRY.values() for key in d.kernels.keys()}
    assert named <= set(cpu.KERNELS), named - set(cpu.KERNELS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_kernels_agree_with_the_registry(dtype, shape, act):
    """Forward, bias + activation fused, and the input gradient (from what the op saves), as
    the registry names them, against its reference forward and VJP in float64; aliasing cases
    (z_out over m, the gradient over dh) give the same bytes."""
    k = REGISTRY[act].kernels
    m, b, dh = rand(shape, dtype, 2), rand(shape[1], dtype, 3), rand(shape, dtype, 4)
    z = m + b
    ref = REGISTRY[act].forward([z.astype(np.float64)], {})
    h = np.full_like(z, np.nan)
    run(k.forward, {"in0": z, "out": h, "code": k.code})
    assert h.dtype == dtype
    np.testing.assert_allclose(h, ref, **tol(dtype))
    fused = REGISTRY["bias_add"].kernels.fuses[act]
    zf, hf = np.full_like(m, np.nan), np.full_like(m, np.nan)
    run(fused, {"in0": m, "in1": b, "out": zf, "next.out": hf, "next.code": k.code})
    np.testing.assert_array_equal(zf, z)
    np.testing.assert_allclose(hf, ref, **tol(dtype))
    m2, h2 = m.copy(), np.full_like(m, np.nan)
    run(fused, {"in0": m2, "in1": b, "out": m2, "next.out": h2, "next.code": k.code})
    np.testing.assert_array_equal(m2, z)
    np.testing.assert_array_equal(h2, hf)
    (grad,) = k.input_grads
    want = REGISTRY[act].vjp(dh.astype(np.float64), [z.astype(np.float64)], h.astype(np.float64),
                             {}, (True,))[0]  # fmt: skip
    out = np.full_like(dh, np.nan)
    run(grad, {"d_out": dh, "out": h, "in0": z, "d_in0": out, "code": k.code})
    # the derivative is O(1): its error is measured against |dh| as well as the result
    err = np.abs(out - want) / (np.abs(want) + np.abs(dh.astype(np.float64)) + 1.0)
    assert err.max() <= 8 * np.finfo(dtype).eps, float(err.max())
    run(grad, {"d_out": dh, "out": h, "in0": z, "d_in0": dh, "code": k.code})  # over dh
    np.testing.assert_array_equal(dh, out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_accurate_over_range(dtype):
    x = np.concatenate(
        [np.linspace(-40, 40, 40001), [0.0, -0.0, 1e-30, -1e-30, 1e-7, 0.6249, 0.6251]]
    ).astype(dtype)[None, :]
    out = np.empty_like(x)
    for act, ulps in [(cpu.SIGMOID, 4), (cpu.TANH, 3)]:
        cpu.act_forward(x, out, act)
        ref = phi_ref(x, act)
        err = np.abs(out - ref) / np.maximum(np.abs(ref), np.finfo(dtype).tiny)
        assert err.max() <= ulps * np.finfo(dtype).eps, (act, float(err.max()))
    cpu.act_forward(x, out, cpu.TANH)
    assert np.signbit(out[0, x[0] == 0]).tolist() == np.signbit(x[0, x[0] == 0]).tolist()


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_special_values(dtype):
    x = np.array([[np.nan, np.inf, -np.inf, 1e30, -1e30, 100.0, -100.0]], dtype)
    out = np.empty_like(x)
    with np.errstate(over="ignore"):
        for act in ACTS:
            cpu.act_forward(x, out, act)
            expected = [x, np.maximum(x, 0), 1 / (1 + np.exp(-x)), np.tanh(x)][act]
            np.testing.assert_array_equal(out, expected.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_xent(dtype, shape):
    o = rand(shape, dtype, 7)
    y = np.random.default_rng(8).integers(0, shape[1], shape[0])
    probs = np.full_like(o, np.nan)
    loss = cpu.softmax_xent_forward(o, y, 0.25, probs)
    ref_probs, ref_loss = xent_ref(o, y, 0.25)
    assert isinstance(loss, float)
    assert loss == pytest.approx(ref_loss, rel=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(probs, ref_probs, **tol(dtype))
    do = np.full_like(o, np.nan)
    cpu.softmax_xent_backward(probs, y, 0.25, do)
    onehot = np.eye(shape[1])[y]
    np.testing.assert_allclose(do, 0.25 * (probs.astype(np.float64) - onehot), **tol(dtype))
    o2 = o.copy()
    assert cpu.softmax_xent_forward(o2, y, 0.25, o2) == loss  # probs_out aliases o
    np.testing.assert_array_equal(o2, probs)
    cpu.softmax_xent_backward(probs, y, 0.25, probs)  # do_out aliases probs
    np.testing.assert_array_equal(probs, do)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_extremes(dtype):
    o = np.array([[1e4, -1e4, 0.0], [0.0, -np.inf, 1.0], [np.nan, 0.0, 0.0]], dtype)
    y = np.array([1, 2, 0])
    probs = np.empty_like(o)
    with np.errstate(invalid="ignore"):
        loss = cpu.softmax_xent_forward(o[:2], y[:2], 1.0, probs[:2])
        ref_probs, ref_loss = xent_ref(o[:2], y[:2], 1.0)
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        np.testing.assert_allclose(probs[:2], ref_probs, **tol(dtype))
        assert probs[1, 1] == 0.0
        assert np.isnan(cpu.softmax_xent_forward(o, y, 1.0, probs))
        assert np.isnan(probs[2]).all()


def test_softmax_xent_label_out_of_range():
    o, probs = np.zeros((2, 3)), np.zeros((2, 3))
    for bad in (3, -1):
        with pytest.raises(ValueError, match="label"):
            cpu.softmax_xent_forward(o, np.array([0, bad]), 1.0, probs)
        with pytest.raises(ValueError, match="label"):
            cpu.softmax_xent_backward(probs, np.array([bad, 0]), 1.0, o)


def test_unknown_activation_code():
    z = np.zeros((2, 2))
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="activation"):
            cpu.act_forward(z, z.copy(), bad)
        with pytest.raises(ValueError, match="activation"):
            cpu.bias_act_forward(z, z[0], z.copy(), z.copy(), bad)
        with pytest.raises(ValueError, match="activation"):
            cpu.act_backward(z, z, z.copy(), bad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_mse(dtype, shape):
    o, t = rand(shape, dtype, 9), rand(shape, dtype, 10)
    d = o.astype(np.float64) - t
    loss = cpu.mse_forward(o, t, 0.5)
    assert isinstance(loss, float)
    assert loss == pytest.approx(0.5 * 0.5 * np.sum(d * d), rel=1e-12)
    do = np.full_like(o, np.nan)
    cpu.mse_backward(o, t, 0.5, do)
    np.testing.assert_allclose(do, 0.5 * d, **tol(dtype))
    o2, t2 = o.copy(), t.copy()
    cpu.mse_backward(o2, t, 0.5, o2)  # do_out aliases o
    cpu.mse_backward(o, t2, 0.5, t2)  # do_out aliases t
    np.testing.assert_array_equal(o2, do)
    np.testing.assert_array_equal(t2, do)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_sum_rows(dtype, shape):
    g = rand(shape, dtype, 11)
    bound = shape[0] * np.finfo(dtype).eps * np.abs(g.astype(np.float64)).sum(axis=0)
    out = np.full(shape[1], np.nan, dtype)
    cpu.sum_rows(g, out)
    assert np.all(np.abs(out - g.astype(np.float64).sum(axis=0)) <= bound)
    start = rand(shape[1], dtype, 12)
    acc = start.copy()
    cpu.sum_rows(g, acc, True)
    ref = start + g.astype(np.float64).sum(axis=0)
    assert np.all(np.abs(acc - ref) <= bound + np.finfo(dtype).eps * np.abs(ref))
    cpu.sum_rows(g, acc, False)
    np.testing.assert_array_equal(acc, out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_sq_norm_and_accumulate(dtype, shape):
    w = rand(shape, dtype, 13)
    ref = float(np.sum(w.astype(np.float64) ** 2))
    assert cpu.sq_norm(w) == pytest.approx(ref, rel=1e-13)
    assert cpu.sq_norm(w.reshape(-1)) == pytest.approx(ref, rel=1e-13)
    src = rand(shape, dtype, 14)
    expected = w + src
    cpu.accumulate(w.reshape(-1), src.reshape(-1))
    np.testing.assert_array_equal(w, expected)


def sgd_ref(w, g, v, lr, momentum, wd):
    d = g + wd * w
    if momentum != 0:
        v[:] = momentum * v + d
        d = v
    return w - lr * d


def adam_ref(w, g, m, v, lr, b1, b2, eps, step, wd):
    g = g + wd * w
    m[:] = b1 * m + (1 - b1) * g
    v[:] = b2 * v + (1 - b2) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - b2**step) + eps
    return w - lr / (1 - b1**step) * m / denom


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum, wd", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.01), (0.0, 0.1)])
def test_sgd_update_matches_torch_semantics(dtype, momentum, wd):
    w = rand((7, 13), dtype, 15)
    v = np.zeros_like(w)
    w_ref, v_ref = w.astype(np.float64), np.zeros(w.shape)
    for step in range(4):
        g = rand((7, 13), dtype, 100 + step)
        cpu.sgd_update(w.reshape(-1), g.reshape(-1), v.reshape(-1), 0.1, momentum, wd)
        w_ref = sgd_ref(w_ref, g, v_ref, 0.1, momentum, wd)
    np.testing.assert_allclose(w, w_ref, **tol(dtype, 32))
    np.testing.assert_allclose(v, v_ref, **tol(dtype, 32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adam_update_matches_torch_semantics(dtype, wd):
    w = rand(257, dtype, 16)
    m, v = np.zeros_like(w), np.zeros_like(w)
    w_ref, m_ref, v_ref = w.astype(np.float64), np.zeros(w.shape), np.zeros(w.shape)
    for step in range(1, 6):
        g = rand(257, dtype, 200 + step)
        cpu.adam_update(w, g, m, v, 1e-2, 0.9, 0.999, 1e-8, step, wd)
        w_ref = adam_ref(w_ref, g, m_ref, v_ref, 1e-2, 0.9, 0.999, 1e-8, step, wd)
    np.testing.assert_allclose(w, w_ref, **tol(dtype, 16))  # |w| ~ 1: eps-scale absolute error
    np.testing.assert_allclose(m, m_ref, **tol(dtype, 64))  # |g| ~ 3, and m may cancel
    with pytest.raises(ValueError, match="step"):
        cpu.adam_update(w, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0, wd)


def numba_kernels(module):
    """The module's Numba kernels (the table's BLAS products and composites are plain Python)."""
    return [k for n in module.__all__ if hasattr(k := getattr(module, n), "targetoptions")]


def test_kernels_are_nogil_and_serial():
    kernels = numba_kernels(cpu)
    assert {k.__name__ for k in kernels} >= {"act_forward", "sum_rows", "axpy", "adam_update"}
    for k in kernels:
        assert k.targetoptions.get("nogil") is True, k
        assert not k.targetoptions.get("parallel"), k


def call_every_kernel():
    """Call each kernel once per dtype; return how many array arguments were passed."""
    import numpy as np

    from workers.kernels import cpu

    arrays = 0

    def call(kernel, *args):
        nonlocal arrays
        arrays += sum(isinstance(a, np.ndarray) for a in args)
        kernel(*args)

    for dt in (np.float32, np.float64):
        m, b, y = np.ones((5, 6), dt), np.zeros(6, dt), np.arange(5) % 6
        z, h = np.empty_like(m), np.empty_like(m)
        w, g, v, v2 = m.reshape(-1), h.reshape(-1), np.zeros(30, dt), np.zeros(30, dt)
        call(cpu.bias_add, m, b, z)
        call(cpu.bias_add, z, b, z)
        for act in range(4):
            call(cpu.act_forward, m, h, act)
            call(cpu.bias_act_forward, m, b, z, h, act)
            call(cpu.act_backward, m, h, z, act)
            call(cpu.act_backward, z, h, z, act)
        call(cpu.softmax_xent_forward, m, y, 0.5, z)
        call(cpu.softmax_xent_backward, z, y, 0.5, h)
        call(cpu.mse_forward, m, h, 0.5)
        call(cpu.mse_backward, m, h, 0.5, z)
        call(cpu.sum_rows, m, b, False)
        call(cpu.sq_norm, m)
        call(cpu.accumulate, w, g)
        call(cpu.sgd_update, w, g, v, 0.1, 0.9, 0.0)
        call(cpu.adam_update, w, g, v, v2, 0.1, 0.9, 0.999, 1e-8, 1, 0.0)
    return arrays


CHILD = f"""
import json
from numba.core.runtime import rtsys
from workers.kernels import cpu
{inspect.getsource(call_every_kernel)}
call_every_kernel()  # loads every kernel (and starts the runtime, enabling its stats)
before = rtsys.get_allocation_stats().alloc
arrays = call_every_kernel()
allocs = rtsys.get_allocation_stats().alloc - before
kernels = [k for n in cpu.__all__ if hasattr(k := getattr(cpu, n), "stats")]
hits = sum(sum(k.stats.cache_hits.values()) for k in kernels)
misses = sum(sum(k.stats.cache_misses.values()) for k in kernels)
print(json.dumps({{"allocs": allocs, "arrays": arrays, "hits": hits, "misses": misses}}))
"""


@pytest.mark.ray
def test_second_process_loads_from_disk_cache_and_allocates_nothing():
    """This process compiles (or loads) every kernel; a fresh one must only load them.

    NUMBA_NRT_STATS counts allocations in the child; the only ones allowed are the wrappers
    NumPy arrays get when passed in (one per array argument).
    """
    call_every_kernel()
    env = {**os.environ, "NUMBA_NRT_STATS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["misses"] == 0 and result["hits"] >= 26, result
    assert result["allocs"] == result["arrays"], result
