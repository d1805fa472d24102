"""Contract of workers.kernels.cuda, checked without a GPU (and on one by tools/gpu-check).

Under Numba's CUDA simulator (or, with GRAPHPART_CUDA_TESTS=gpu, on the real GPU) every wrapper
agrees with a NumPy reference in float32 and float64 on small odd shapes (5x7, 17x3, 1x1),
aliasing cases included: the activations and their output-based derivatives, softmax cross-
entropy (stable, a bad label gives a NaN loss), MSE, sum_rows, sq_norm (grid-stride partials),
accumulate, SGD and Adam with torch semantics, and gemm / matmul_nt / matmul_nn / matmul_tn for
every transpose, alpha and beta (beta=0 never reads out), with one output per thread and with
register tiles across several blocks and k panels; gemm_reg picks the largest register tile that
still fills GEMM_MIN_BLOCKS blocks. Bad activation codes, gemm shapes and Adam steps raise
ValueError. The module imports on a machine without a GPU, and where libNVVM is installed every
kernel compiles to PTX for sm_90, the float32 elementwise, optimizer and matmul kernels without
float64 math, and no gemm variant spills its accumulators to local memory.

NUMBA_ENABLE_CUDASIM must be set before numba is first imported, so the checks run in a
subprocess that executes this file as a script; the tests here read its report.
"""

import contextlib
import json
import os
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ray  # the checks run in a subprocess (the CUDA simulator)

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(5, 7), (17, 3), (1, 1)]
DTYPES = ["float32", "float64"]
SWITCH_INTERVAL_S = 1e-4  # see speed_up_simulator
# GRAPHPART_CUDA_TESTS=gpu: run the kernel checks on the real GPU instead of the simulator
GPU_MODE = "GRAPHPART_CUDA_TESTS"
SIMULATED = os.environ.get(GPU_MODE, "sim") != "gpu"


def tol(dtype, ulps=16):
    eps = np.finfo(dtype).eps
    return {"rtol": ulps * eps, "atol": ulps * eps}


def rand(shape, dtype, seed, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# --- simulator checks (run in the child process) ---------------------------------------------


@contextlib.contextmanager
def small_blocks(kc, threads=4, tile=4, reg=2, min_blocks=1):
    """Shrink THREADS, TILE and the gemm's register tile so that small inputs already take the
    strided loops, several blocks and several k panels, for a fraction of the threads. The
    simulator reads them at launch; on a GPU the reductions read blockDim and the gemm is
    compiled per (TILE, register tile), so the same checks hold there."""
    saved = kc.THREADS, kc.TILE, kc.GEMM_REG, kc.GEMM_MIN_BLOCKS
    kc.THREADS, kc.TILE, kc.GEMM_REG, kc.GEMM_MIN_BLOCKS = threads, tile, reg, min_blocks
    try:
        yield
    finally:
        kc.THREADS, kc.TILE, kc.GEMM_REG, kc.GEMM_MIN_BLOCKS = saved


def run(kc, call, arrays):
    """Call the CUDA kernel a registry Call names (graphpart.ir.calls), its arguments by role."""
    return kc.KERNELS[call.key](*[arrays[role] for role in call.args])


def check_bias_and_activations(kc, cuda, dtype):
    """bias_add, and for every activation of the registry its forward, bias + activation fused
    and input gradient (from what the op saves), as the registry names them, against its
    reference forward and VJP; aliasing cases give the same bytes."""
    from graphpart.ir.ops import ACTIVATIONS, REGISTRY

    for shape in SHAPES:
        m, b, dh = rand(shape, dtype, 1), rand(shape[1], dtype, 2), rand(shape, dtype, 3)
        d_m, d_b, d_out = cuda.to_device(m), cuda.to_device(b), cuda.device_array(shape, dtype)
        kc.bias_add(d_m, d_b, d_out)
        np.testing.assert_array_equal(d_out.copy_to_host(), m + b)
        kc.bias_add(d_m, d_b, d_m)  # out aliases m
        np.testing.assert_array_equal(d_m.copy_to_host(), m + b)
        z = m + b
        for act in ACTIVATIONS:
            k, fused = REGISTRY[act].kernels, REGISTRY["bias_add"].kernels.fuses[act]
            ref = REGISTRY[act].forward([z.astype(np.float64)], {})
            d_z, d_h = cuda.to_device(z), cuda.device_array_like(z)
            run(kc, k.forward, {"in0": d_z, "out": d_h, "code": k.code})
            np.testing.assert_allclose(d_h.copy_to_host(), ref, **tol(dtype))
            d_m, d_zf, d_hf = (
                cuda.to_device(m),
                cuda.device_array_like(m),
                cuda.device_array_like(m),
            )
            run(kc, fused, {"in0": d_m, "in1": d_b, "out": d_zf, "next.out": d_hf,
                            "next.code": k.code})  # fmt: skip
            np.testing.assert_array_equal(d_zf.copy_to_host(), z)
            h = d_hf.copy_to_host()
            np.testing.assert_allclose(h, ref, **tol(dtype))
            run(
                kc,
                fused,
                {"in0": d_m, "in1": d_b, "out": d_m, "next.out": d_hf, "next.code": k.code},
            )  # z_out aliases m; fmt: skip
            np.testing.assert_array_equal(d_m.copy_to_host(), z)
            want = REGISTRY[act].vjp(dh.astype(np.float64), [z.astype(np.float64)],
                                     h.astype(np.float64), {}, (True,))[0]  # fmt: skip
            d_dh, d_g = cuda.to_device(dh), cuda.device_array_like(dh)
            (grad,) = k.input_grads
            roles = {"d_out": d_dh, "out": cuda.to_device(h), "in0": d_z, "code": k.code}
            run(kc, grad, {**roles, "d_in0": d_g})
            g = d_g.copy_to_host()
            err = np.abs(g - want) / (np.abs(want) + np.abs(dh.astype(np.float64)) + 1.0)
            assert err.max() <= 16 * np.finfo(dtype).eps, (act, float(err.max()))
            run(kc, grad, {**roles, "d_in0": d_dh})  # out aliases dh
            np.testing.assert_array_equal(d_dh.copy_to_host(), g)


def check_activation_extremes(kc, cuda, dtype):
    from graphpart.ir.ops import ACTIVATIONS, REGISTRY

    x = np.array([[-1e4, -50.0, -1e-30, 0.0, 1e-30, 50.0, 1e4, np.nan]], dtype)
    for act in ACTIVATIONS:
        k = REGISTRY[act].kernels
        d_x, d_h = cuda.to_device(x), cuda.device_array_like(x)
        run(kc, k.forward, {"in0": d_x, "out": d_h, "code": k.code})
        with np.errstate(over="ignore", invalid="ignore"):
            ref = REGISTRY[act].forward([x.astype(np.float64)], {})
            np.testing.assert_allclose(d_h.copy_to_host(), ref, **tol(dtype))


def xent_ref(o, y, scale):
    o = o.astype(np.float64)
    mx = o.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(o - mx).sum(axis=1))
    return np.exp(o - lse[:, None]), scale * float(np.sum(lse - o[np.arange(len(y)), y]))


def check_softmax_xent(kc, cuda, dtype):
    for shape in SHAPES:
        softmax_xent_case(kc, cuda, dtype, shape)
    with small_blocks(kc):
        softmax_xent_case(kc, cuda, dtype, (3, 10))  # rows longer than a block
    bad = cuda.to_device(np.array([0, 7]))
    d_o = cuda.to_device(rand((2, 7), dtype, 6))
    d_loss = cuda.device_array(2, np.float64)
    loss = kc.softmax_xent_forward(d_o, bad, 1.0, cuda.device_array((2, 7), dtype), d_loss)
    assert np.isnan(loss)


def softmax_xent_case(kc, cuda, dtype, shape):
    o = rand(shape, dtype, 4)
    o[0, 0] = 80.0  # large logit: needs the max shift in float32
    y = np.random.default_rng(5).integers(0, shape[1], shape[0])
    d_o, d_y, d_p = cuda.to_device(o), cuda.to_device(y), cuda.device_array_like(o)
    d_loss = cuda.device_array(shape[0] + 2, np.float64)
    loss = kc.softmax_xent_forward(d_o, d_y, 0.25, d_p, d_loss)
    ref_p, ref_loss = xent_ref(o, y, 0.25)
    assert isinstance(loss, float)
    assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss)), (loss, ref_loss)
    probs = d_p.copy_to_host()
    np.testing.assert_allclose(probs, ref_p, **tol(dtype))
    d_do = cuda.device_array_like(o)
    kc.softmax_xent_backward(d_p, d_y, 0.25, d_do)
    ref_do = 0.25 * (probs.astype(np.float64) - np.eye(shape[1])[y])
    np.testing.assert_allclose(d_do.copy_to_host(), ref_do, **tol(dtype))
    kc.softmax_xent_backward(d_p, d_y, 0.25, d_p)  # do_out aliases probs
    np.testing.assert_array_equal(d_p.copy_to_host(), d_do.copy_to_host())
    assert kc.softmax_xent_forward(d_o, d_y, 0.25, d_o, d_loss) == loss  # probs_out aliases o
    np.testing.assert_array_equal(d_o.copy_to_host(), probs)


def check_mse(kc, cuda, dtype):
    for shape in SHAPES:
        mse_case(kc, cuda, dtype, shape)
    with small_blocks(kc):
        mse_case(kc, cuda, dtype, (2, 10))


def mse_case(kc, cuda, dtype, shape):
    o, t = rand(shape, dtype, 7), rand(shape, dtype, 8)
    d = o.astype(np.float64) - t
    d_o, d_t, d_loss = cuda.to_device(o), cuda.to_device(t), cuda.device_array(64, np.float64)
    loss = kc.mse_forward(d_o, d_t, 0.5, d_loss)
    assert abs(loss - 0.25 * np.sum(d * d)) <= 1e-12 * np.sum(d * d), loss
    d_do = cuda.device_array_like(o)
    kc.mse_backward(d_o, d_t, 0.5, d_do)
    np.testing.assert_allclose(d_do.copy_to_host(), 0.5 * d, **tol(dtype))
    kc.mse_backward(d_o, d_t, 0.5, d_t)  # do_out aliases t
    np.testing.assert_array_equal(d_t.copy_to_host(), d_do.copy_to_host())


def check_reductions(kc, cuda, dtype):
    for shape in SHAPES:
        g = rand(shape, dtype, 9)
        start = rand(shape[1], dtype, 10)
        d_g, d_out = cuda.to_device(g), cuda.to_device(start)
        kc.sum_rows(d_g, d_out, True)
        ref = start + g.astype(np.float64).sum(axis=0)
        np.testing.assert_allclose(d_out.copy_to_host(), ref, **tol(dtype, 64))
        kc.sum_rows(d_g, d_out)
        np.testing.assert_allclose(d_out.copy_to_host(), g.sum(axis=0), **tol(dtype, 64))
        ref = np.sum(g.astype(np.float64) ** 2)
        assert abs(kc.sq_norm(d_g, cuda.device_array(4, np.float64)) - ref) <= 1e-12 * ref
    with small_blocks(kc):  # 8 blocks of work on a 2-entry buffer: the grid-stride loop
        w = rand(30, dtype, 11)
        ref = np.sum(w.astype(np.float64) ** 2)
        partial = cuda.device_array(2, np.float64)
        assert abs(kc.sq_norm(cuda.to_device(w), partial) - ref) <= 1e-12 * ref


def check_optimizers(kc, cuda, dtype):
    w0, src = rand(45, dtype, 12), rand(45, dtype, 13)
    d_w = cuda.to_device(w0)
    kc.accumulate(d_w, cuda.to_device(src))
    np.testing.assert_array_equal(d_w.copy_to_host(), w0 + src)
    for momentum, wd in [(0.0, 0.0), (0.9, 0.01)]:
        w, v = w0.astype(np.float64), np.zeros(45)
        d_w, d_v = cuda.to_device(w0), cuda.to_device(np.zeros(45, dtype))
        for step in range(3):
            g = rand(45, dtype, 20 + step)
            kc.sgd_update(d_w, cuda.to_device(g), d_v, 0.1, momentum, wd)
            d = g + wd * w
            if momentum:
                v = momentum * v + d
                d = v
            w = w - 0.1 * d
        np.testing.assert_allclose(d_w.copy_to_host(), w, **tol(dtype, 32))
    w, m, v = w0.astype(np.float64), np.zeros(45), np.zeros(45)
    d_w, d_m, d_v = (cuda.to_device(a) for a in (w0, np.zeros(45, dtype), np.zeros(45, dtype)))
    for step in range(1, 4):
        g = rand(45, dtype, 30 + step)
        kc.adam_update(d_w, cuda.to_device(g), d_m, d_v, 1e-2, 0.9, 0.999, 1e-8, step, 0.01)
        gg = g + 0.01 * w
        m = 0.9 * m + 0.1 * gg
        v = 0.999 * v + 0.001 * gg * gg
        w = w - 1e-2 / (1 - 0.9**step) * m / (np.sqrt(v) / np.sqrt(1 - 0.999**step) + 1e-8)
    np.testing.assert_allclose(d_w.copy_to_host(), w, **tol(dtype, 64))
    np.testing.assert_allclose(d_m.copy_to_host(), m, **tol(dtype, 64))


def check_gemm(kc, cuda, dtype):
    gemm_case(kc, cuda, dtype, 5, 7, 3)  # TILE = 16: one block, one panel
    with small_blocks(kc):  # TILE = 4, 2 x 2 outputs a thread: several blocks and panels
        assert kc.gemm_reg(9, 6) == 2
        gemm_case(kc, cuda, dtype, 9, 11, 6)
        gemm_case(kc, cuda, dtype, 1, 1, 1)
    with small_blocks(kc, reg=2, min_blocks=4):  # too few blocks: one output a thread
        assert kc.gemm_reg(9, 6) == 1
        gemm_case(kc, cuda, dtype, 9, 11, 6)
    if not SIMULATED:  # a real GPU: TILE = 16, every register tile, several blocks, edges
        for reg in (8, 4, 2, 1):
            with small_blocks(kc, threads=kc.THREADS, tile=kc.TILE, reg=reg, min_blocks=1):
                assert kc.gemm_reg(300, 700) == reg
                gemm_case(kc, cuda, dtype, 300, 101, 700)
        assert kc.gemm_reg(2048, 2048) == kc.GEMM_REG  # as gemm_reg picks it
        gemm_case(kc, cuda, dtype, 2048, 64, 2048)


def check_gemm_reg(kc, cuda, dtype):
    """The register tile: the largest that still gives GEMM_MIN_BLOCKS blocks, at least 1."""
    edge = kc.TILE * kc.GEMM_REG
    blocks = kc.GEMM_MIN_BLOCKS
    assert kc.gemm_reg(edge * blocks, edge) == kc.GEMM_REG
    assert kc.gemm_reg(edge * blocks - edge, edge) < kc.GEMM_REG
    assert kc.gemm_reg(1, 1) == 1
    with small_blocks(kc, tile=2, reg=8, min_blocks=4):
        assert [kc.gemm_reg(n, n) for n in (1, 4, 8, 16, 32, 64)] == [1, 1, 2, 4, 8, 8]


def gemm_case(kc, cuda, dtype, m, k, n):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype)
    dz = rng.standard_normal((m, n)).astype(dtype)
    close = {"rtol": 8 * k * np.finfo(dtype).eps, "atol": 32 * k * np.finfo(dtype).eps}
    d_x, d_w, d_dz = cuda.to_device(x), cuda.to_device(w), cuda.to_device(dz)
    out = cuda.to_device(np.full((m, n), np.nan, dtype))  # beta=0 must not read it
    kc.matmul_nt(d_x, d_w, out)
    np.testing.assert_allclose(out.copy_to_host(), x @ w.T, **close)
    dx = cuda.device_array((m, k), dtype)
    kc.matmul_nn(d_dz, d_w, dx)
    np.testing.assert_allclose(dx.copy_to_host(), dz @ w, **close)
    dw0 = rng.standard_normal((n, k)).astype(dtype)
    dw = cuda.to_device(dw0)
    kc.matmul_tn(d_dz, d_x, dw, beta=1.0)  # accumulate into dW
    np.testing.assert_allclose(dw.copy_to_host(), dw0 + dz.T @ x, **close)
    xtx = cuda.device_array((k, k), dtype)
    kc.gemm(d_x, d_x, xtx, trans_a=True, trans_b=False, alpha=0.5)
    np.testing.assert_allclose(xtx.copy_to_host(), 0.5 * x.T @ x, **close)
    tt = cuda.device_array((k, n), dtype)
    kc.gemm(d_x, cuda.to_device(np.ascontiguousarray(dz.T)), tt, trans_a=True, trans_b=True)
    np.testing.assert_allclose(tt.copy_to_host(), x.T @ dz, **close)


def check_errors(kc, cuda, dtype):
    z = cuda.to_device(np.zeros((2, 3), dtype))
    for call in [
        lambda: kc.act_forward(z, z, 4),
        lambda: kc.bias_act_forward(z, z[0], z, z, -1),
        lambda: kc.act_backward(z, z, z, 7),
        lambda: kc.matmul_nt(z, z, cuda.device_array((3, 3), dtype)),
        lambda: kc.matmul_nn(z, z, cuda.device_array((2, 3), dtype)),
        lambda: kc.adam_update(z[0], z[0], z[0], z[0], 0.1, 0.9, 0.99, 1e-8, 0, 0.0),
        lambda: kc.mse_forward(z, z, 1.0, cuda.device_array(1, np.float64)),
    ]:
        try:
            call()
        except ValueError:
            continue
        raise AssertionError("expected ValueError")


CHECKS = {f.__name__: f for f in [
    check_bias_and_activations, check_activation_extremes, check_softmax_xent, check_mse,
    check_reductions, check_optimizers, check_gemm, check_gemm_reg, check_errors,
]}  # fmt: skip


def speed_up_simulator() -> None:
    """Make the simulator fast enough, and keep it correct while it is.

    Its block manager busy-polls its threads while holding the GIL, so each handover waits for
    the interpreter's 5 ms switch interval; a shorter one makes barrier-heavy kernels much
    faster. Its shared-array allocation (first thread to ask allocates, keyed by source line)
    is an unlocked check-then-set, which frequent switches turn into threads of one block
    getting different "shared" arrays; the replacement below allocates under a lock.
    """
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype):
        if shape == 0:  # dynamic shared memory: one buffer, no race
            return original(self, shape, dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            if key not in self._allocations:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                self._allocations[key] = np.empty(shape, dtype)
            return self._allocations[key]

    kernelapi.FakeCUDAShared.array = array


def run_checks() -> dict[str, str]:
    """Run every check per dtype (under the simulator, or on the GPU when GPU_MODE is set);
    map "name[dtype]" to "ok" or a traceback."""
    if SIMULATED:
        assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
        speed_up_simulator()
    from numba import cuda

    from workers.kernels import cuda as kc

    assert kc.available(), "no CUDA device"
    if not SIMULATED:
        from numba.core import config

        assert not config.ENABLE_CUDASIM, "GPU mode asked for, but the simulator is on"
    results = {}
    for name, check in CHECKS.items():
        for dtype in DTYPES:
            try:
                check(kc, cuda, np.dtype(dtype))
                results[f"{name}[{dtype}]"] = "ok"
            except Exception:  # noqa: BLE001 - reported to the parent test
                results[f"{name}[{dtype}]"] = traceback.format_exc()
    return results


# --- tests (the pytest process) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator_report():
    """The checks' report from a child process: under the simulator, or with GRAPHPART_CUDA_TESTS
    =gpu (as tools/gpu-check sets it) on the real GPU, the simulator forced off."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if SIMULATED:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run(
        [sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CHECKS))
def test_under_simulator(simulator_report, name, dtype):
    outcome = simulator_report[f"{name}[{dtype}]"]
    assert outcome == "ok", outcome


def test_imports_without_gpu():
    from graphpart.ir.ops import REGISTRY
    from workers.kernels import cuda as kc

    assert isinstance(kc.available(), bool)
    assert kc.TILE == 16 and kc.ACTIVATIONS == {"identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
    named = {key for d in REGISTRY.values() for key in d.kernels.keys()}
    assert named <= set(kc.KERNELS), named - set(kc.KERNELS)
    assert set(kc.REDUCTIONS) <= set(kc.KERNELS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kernel_compiles_to_ptx(dtype):
    from numba.core import config

    if config.ENABLE_CUDASIM:
        pytest.skip("this process runs the simulator")
    from numba.cuda.cudadrv import libs, nvvm

    from workers.kernels import cuda as kc

    if not nvvm.is_available() or not libs.get_libdevice():
        pytest.skip("no CUDA toolkit (libNVVM and libdevice) here")
    cc = max(c for c in nvvm.get_supported_ccs() if c <= (9, 0))
    ptx = kc.compile_ptx(np.dtype(dtype), cc=cc)
    target = f".target sm_{cc[0]}{cc[1]}"
    assert all(".entry" in text and target in text for text in ptx.values())
    if dtype == "float32":
        reductions = {"softmax_xent_forward", "mse_forward", "sq_norm"}  # float64 by design
        with_f64 = [n for n, text in ptx.items() if ".f64" in text and n not in reductions]
        assert with_f64 == []
    gemms = [n for n in ptx if n.startswith("gemm_")]
    assert len(gemms) == 4 * kc.GEMM_REG.bit_length()  # 4 layouts x register tiles 1, 2, ..
    spilled = [n for n in gemms if "ld.local" in ptx[n] or "st.local" in ptx[n]]
    assert spilled == []  # every register tile's accumulators stay in registers


if __name__ == "__main__":
    print(json.dumps(run_checks()))
