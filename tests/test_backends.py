"""Backends behind the executor: the CUDA backend trains exactly like the oracle.

Contract: a 2-stage, 2-micro-batch pipeline whose stages run on the CUDA backend (under Numba's
CUDA simulator here; on a real GPU where one is lent) gives, after optimizer steps, the
parameters of the reference autodiff + reference optimizer to 1e-10 relative in float64, and
inference logits equal to the reference forward. The CPU backend is covered by test_stage and
test_engine; unknown device names are a one-line ConfigError, and so is a CUDA device where
numba finds none (the message carries numba's reason and says what to do), while the simulator
still makes a CUDA backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphpart.errors import ConfigError
from workers.backends import check_device, cuda_problem, get_backend

ROOT = Path(__file__).resolve().parents[1]


def _run_on_cuda() -> dict:
    import numpy as np

    from graphpart.autodiff import forward, value_and_grad
    from graphpart.engines import Engine
    from graphpart.ir import mlp
    from graphpart.optim import init_state, make_optimizer, reference_step
    from graphpart.plan.partition import partition

    rng = np.random.default_rng(0)
    g = mlp([5, 4, 6, 3], activation="relu", bias=True, weight_decay=0.1)
    p0 = {v.name: rng.standard_normal(v.shape) for v in g.params}
    X, Y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    opt = make_optimizer("adam", lr=0.05)
    ref = {k: v.copy() for k, v in p0.items()}
    state = init_state(opt, ref)
    _, gr = value_and_grad(g, ref, {"x": X, "y": Y})
    reference_step(opt, ref, gr, state, 1)
    eng = Engine(
        partition(g, 2), p0, opt, microbatches=2, schedule="1f1b", max_rows=8, device="cuda"
    )
    eng.step(X, Y)
    got = eng.get_params()
    logits = eng.predict(X)
    want = forward(g, got, {"x": X, "y": Y})["o"]
    return {
        "param_err": max(float(np.abs(ref[k] - got[k]).max() / np.abs(ref[k]).max()) for k in ref),
        "logit_err": float(np.abs(logits - want).max() / np.abs(want).max()),
    }


@pytest.mark.ray  # the checks run in a subprocess (the CUDA simulator)
def test_cuda_backend_matches_oracle():
    """The CUDA backend trains like the oracle: under Numba's simulator, or on the real GPU
    with GRAPHPART_CUDA_TESTS=gpu (tools/gpu-check sets it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    if os.environ.get("GRAPHPART_CUDA_TESTS") == "gpu":
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    else:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    proc = subprocess.run(
        [sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["param_err"] < 1e-10
    assert report["logit_err"] < 1e-10


def test_unknown_device():
    with pytest.raises(ConfigError, match="tpu"):
        get_backend("tpu")


NO_DRIVER = (
    "\nCUDA driver library cannot be found.\nIf you are sure that a CUDA driver is installed,\n"
    "try setting environment variable NUMBA_CUDA_DRIVER\n"
)


@pytest.fixture
def no_gpu(monkeypatch):
    """numba.cuda as on a machine without a CUDA driver (whatever this machine has)."""
    from numba import cuda

    monkeypatch.setattr(cuda, "is_available", lambda: False)
    monkeypatch.setattr(cuda, "cuda_error", lambda: NO_DRIVER)


def test_cuda_without_a_gpu_is_a_one_line_config_error(no_gpu):
    with pytest.raises(ConfigError) as exc:
        get_backend("cuda")
    assert str(exc.value) == (
        "pipeline.device='cuda': no CUDA device was found (CUDA driver library cannot be "
        "found); check with nvidia-smi, or use --device cpu"
    )
    with pytest.raises(ConfigError, match="no CUDA device"):
        check_device("cuda")
    check_device("cpu")  # the CPU needs nothing


def test_cuda_problem_when_numba_raises_or_gives_no_reason(monkeypatch):
    from numba import cuda
    from numba.cuda.cudadrv.error import CudaSupportError

    def boom():
        raise CudaSupportError(
            "Error at driver init: \n\nCall to cuInit results in CUDA_ERROR_NO_DEVICE (100)"
        )

    monkeypatch.setattr(cuda, "is_available", boom)
    assert cuda_problem() == "Call to cuInit results in CUDA_ERROR_NO_DEVICE (100)"
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    monkeypatch.setattr(cuda, "cuda_error", lambda: None)
    assert "no usable GPU" in cuda_problem()


@pytest.mark.ray  # a subprocess: the simulator must be chosen before numba is imported
def test_the_cuda_simulator_still_makes_a_cuda_backend():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT)}
    code = (
        "from workers.backends import cuda_problem, get_backend; "
        "assert cuda_problem() is None; print(get_backend('cuda').name)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "cuda", proc.stderr[-2000:]


if __name__ == "__main__":  # the simulator subprocess
    sys.path.insert(0, str(Path(__file__).parent))
    from test_kernels_cuda import speed_up_simulator

    speed_up_simulator()
    print(json.dumps(_run_on_cuda()))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("contiguous", [True, False])
def test_cpu_matmul_tn_accumulates_in_the_gemm(dtype, contiguous):
    """matmul_tn(a, b, out, beta): out = a.T @ b + beta * out, written in place (the BLAS gemm
    with beta on C-ordered arrays; the plain way for other layouts), equal to NumPy's."""
    import numpy as np

    bk = get_backend("cpu")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((7, 5)).astype(dtype), rng.standard_normal((7, 3)).astype(dtype)
    if not contiguous:
        a = np.asfortranarray(a)
    out = rng.standard_normal((5, 3)).astype(dtype)
    before, buf = out.copy(), out
    bk.kernels["matmul_tn"](a, b, out, 1.0)
    assert out is buf and out.dtype == np.dtype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(out, before + a.T @ b, rtol=tol, atol=tol)
    bk.kernels["matmul_tn"](a, b, out)  # beta 0: overwritten
    np.testing.assert_allclose(out, a.T @ b, rtol=tol, atol=tol)
