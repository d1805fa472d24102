"""One float32 training step on the GPU: graphpart's engine against CuPy and PyTorch CUDA.

Every contender starts from the same parameters and takes the same Adam step of the same MLP
(relu, bias, softmax cross-entropy, no weight decay) on the same minibatch, which each copies
from host memory every step, as a training loop feeds it. Times are host-side with the device
synchronised after each step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphpart.engines import Engine
from graphpart.ir import mlp
from graphpart.optim import make_optimizer
from graphpart.params import init_params
from graphpart.plan.partition import partition
from graphpart.tools.bench.contenders import OPTIMIZER_KW, NumpyMLP, torch_model, torch_step
from graphpart.tools.bench.cost import step_flops
from graphpart.tools.gpu_check.probe import cupy_status, torch_status
from graphpart.tools.gpu_check.timing import ratio, time_calls


def cuda_engine(
    params: dict[str, np.ndarray], sizes: Sequence[int], batch: int, weight_decay: float = 0.0
) -> Engine:
    """graphpart's one-stage in-process engine on the CUDA backend (Adam, relu, bias)."""
    g = mlp(list(sizes), activation="relu", bias=True, weight_decay=weight_decay)
    return Engine(
        partition(g, 1),
        {k: v.copy() for k, v in params.items()},
        make_optimizer("adam", **OPTIMIZER_KW["adam"]),
        max_rows=batch,
        device="cuda",
    )


def _summary(t: dict[str, float] | None, batch: int, flops: int) -> dict[str, Any] | None:
    if t is None:
        return None
    med = t["median_s"]
    return {
        "median_ms": 1e3 * med,
        "best_ms": 1e3 * t["best_s"],
        "samples_per_s": batch / med,
        "tflops": flops / med / 1e12,
        "repeats": t["repeats"],
    }


def bench_step(
    sizes: Sequence[int], batch: int, repeats: int, warmup: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Time one float32 training step at `batch` rows in graphpart, CuPy and PyTorch CUDA."""
    from numba import cuda

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch).astype(np.int64)
    g = mlp(list(sizes), activation="relu", bias=True)
    params = init_params(g, seed, "float32")
    flops = step_flops(list(sizes), batch)
    out: dict[str, Any] = {"sizes": list(sizes), "batch": batch, "dtype": "float32"}

    eng = cuda_engine(params, sizes, batch)
    try:
        t = time_calls(lambda: eng.step(x, y), cuda.synchronize, repeats, warmup)
    finally:
        eng.close()
    out["graphpart"] = _summary(t, batch, flops)

    cp, why = cupy_status()
    out["cupy_status"] = why
    out["cupy"] = None
    if cp is not None:
        model = NumpyMLP(params, "relu", True, "adam", xp=cp)
        yd = cp.asarray(y)
        sync = cp.cuda.Device().synchronize
        out["cupy"] = _summary(
            time_calls(lambda: model.step(cp.asarray(x), yd), sync, repeats, warmup), batch, flops
        )

    torch, why = torch_status()
    out["torch_status"] = why
    out["torch"] = None
    if torch is not None:
        xt = torch.from_numpy(x).pin_memory()
        yt = torch.from_numpy(y).to("cuda")
        xd = torch.empty(xt.shape, dtype=xt.dtype, device="cuda")
        tm, opt = torch_model(torch, params, sizes, device="cuda")
        step = torch_step(torch, tm, opt, xd, yt)

        def run() -> None:
            xd.copy_(xt, non_blocking=True)
            step()

        out["torch"] = _summary(
            time_calls(run, torch.cuda.synchronize, repeats, warmup), batch, flops
        )
    gp = out["graphpart"]["median_ms"]
    for peer in ("cupy", "torch"):
        p = out[peer]
        out[f"ratio_{peer}"] = ratio(gp, p["median_ms"] if p else None)  # > 1: graphpart slower
    return out
