"""graphpart's gemm kernel alone against cuBLAS (through CuPy, else PyTorch) on n x n x n.

The kernel is the CUDA backend's own `matmul_nn` (c = a @ b; `matmul_nt`, the forward
product, too), reached through a one-stage CUDA engine, so what is timed is exactly what a
training step launches. `ratio` is cuBLAS's time over the kernel's: the kernel's fraction of
cuBLAS's speed (1.0: as fast).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphpart.tools.gpu_check.probe import cupy_status, torch_status
from graphpart.tools.gpu_check.step_bench import cuda_engine
from graphpart.tools.gpu_check.timing import ratio, time_calls


def kernel_backend() -> Any:
    """The CUDA backend of a tiny one-stage engine: its matmuls are graphpart's gemm kernel,
    its `k` the kernel module (the tile constants, `gemm_reg`)."""
    g_sizes = [2, 2]
    params = {"W1": np.ones((2, 2), np.float32), "b1": np.zeros(2, np.float32)}
    eng = cuda_engine(params, g_sizes, 1)
    bk = eng.transport.workers[0].bk
    eng.close()
    return bk


def _cublas(n: int, a: np.ndarray, b: np.ndarray, repeats: int) -> tuple[dict | None, str, str]:
    """cuBLAS's c = a @ b (and a @ b.T) timings through CuPy, else PyTorch; (times, via, why)."""
    cp, why_cp = cupy_status()
    if cp is not None:
        da, db, dc = cp.asarray(a), cp.asarray(b), cp.empty((n, n), np.float32)
        sync = cp.cuda.Device().synchronize
        nn = time_calls(lambda: cp.matmul(da, db, out=dc), sync, repeats)
        nt = time_calls(lambda: cp.matmul(da, db.T, out=dc), sync, repeats)
        return {"nn": nn, "nt": nt}, "cupy", "ok"
    torch, why_t = torch_status()
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False  # plain float32, as the kernel computes
        ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
        tc = torch.empty((n, n), dtype=torch.float32, device="cuda")
        sync = torch.cuda.synchronize
        nn = time_calls(lambda: torch.matmul(ta, tb, out=tc), sync, repeats)
        nt = time_calls(lambda: torch.matmul(ta, tb.T, out=tc), sync, repeats)
        return {"nn": nn, "nt": nt}, "torch", "ok"
    return None, "", f"CuPy: {why_cp}; PyTorch: {why_t}"


def bench_gemm(
    sizes: Sequence[int], repeats: int, variants_at: int | None = None
) -> dict[str, Any]:
    """Kernel vs cuBLAS at each n in `sizes` (float32); at n = `variants_at` also every
    register tile the kernel has (1, 2, 4, 8 outputs a thread and axis), to tune GEMM_REG."""
    from numba import cuda

    bk = kernel_backend()
    k = bk.k
    rows: list[dict[str, Any]] = []
    status = "ok"
    for n in sizes:
        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        da, db, dc = bk.from_host(a), bk.from_host(b), bk.empty((n, n), np.float32)
        bk.matmul_nn(da, db, dc)
        want = a.astype(np.float64) @ b
        err = float(np.abs(dc.copy_to_host() - want).max() / np.abs(want).max())
        flops = 2.0 * n**3
        nn = time_calls(lambda: bk.matmul_nn(da, db, dc), cuda.synchronize, repeats)  # noqa: B023
        nt = time_calls(lambda: bk.matmul_nt(da, db, dc), cuda.synchronize, repeats)  # noqa: B023
        ref, via, status = _cublas(n, a, b, repeats)
        row: dict[str, Any] = {
            "n": n,
            "register_tile": k.gemm_reg(n, n),
            "max_rel_err": err,
            "kernel_nn_ms": 1e3 * nn["median_s"],
            "kernel_nt_ms": 1e3 * nt["median_s"],
            "kernel_nn_tflops": flops / nn["median_s"] / 1e12,
            "cublas_via": via or None,
            "cublas_nn_ms": 1e3 * ref["nn"]["median_s"] if ref else None,
            "cublas_nt_ms": 1e3 * ref["nt"]["median_s"] if ref else None,
            "cublas_nn_tflops": flops / ref["nn"]["median_s"] / 1e12 if ref else None,
        }
        row["ratio_nn"] = ratio(row["cublas_nn_ms"], row["kernel_nn_ms"])
        row["ratio_nt"] = ratio(row["cublas_nt_ms"], row["kernel_nt_ms"])
        if n == variants_at:
            row["variants_nn_ms"] = _variants(k, bk, da, db, dc, repeats)
        rows.append(row)
    return {"dtype": "float32", "cublas_status": status, "sizes": rows}


def _variants(k: Any, bk: Any, da: Any, db: Any, dc: Any, repeats: int) -> dict[str, float]:
    """matmul_nn's median ms with each register tile forced (GEMM_MIN_BLOCKS = 1)."""
    from numba import cuda

    saved = k.GEMM_REG, k.GEMM_MIN_BLOCKS
    out: dict[str, float] = {}
    try:
        reg = saved[0]
        while reg >= 1:
            k.GEMM_REG, k.GEMM_MIN_BLOCKS = reg, 1
            t = time_calls(lambda: bk.matmul_nn(da, db, dc), cuda.synchronize, repeats)
            out[str(reg)] = 1e3 * t["median_s"]
            reg //= 2
    finally:
        k.GEMM_REG, k.GEMM_MIN_BLOCKS = saved
    return out
