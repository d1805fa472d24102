"""float64 on the GPU against the CPU reference: gradients, optimizer steps, pipelines.

The reference is graphpart's single-process autodiff and reference optimizer step (NumPy, on
the CPU); the contender is an `Engine` whose stages run on the CUDA backend: one stage in
process, two stages in process (micro-batches, boundary tensors between stages), and two
stages as Ray actors sharing the GPUs (`--ray`). Errors are max |got - want| / max |want|
per array, the largest over all parameters; the bar is 1e-10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphpart.autodiff import value_and_grad
from graphpart.engines import Engine
from graphpart.ir import mlp
from graphpart.optim import init_state, make_optimizer, reference_step
from graphpart.params import init_params
from graphpart.plan.partition import partition

TOLERANCE = 1e-10


@dataclass(frozen=True)
class Pipeline:
    """How the CUDA engine runs: `stages` stages, `microbatches`, over `transport`."""

    stages: int = 1
    microbatches: int = 1
    transport: str = "inprocess"

    @property
    def name(self) -> str:
        return f"{self.stages} stage(s), {self.microbatches} micro-batch(es), {self.transport}"


def rel_err(got: Any, want: Any) -> float:
    a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def check_float64(
    sizes: Sequence[int],
    x: np.ndarray,
    y: np.ndarray,
    pipeline: Pipeline = Pipeline(),
    steps: int = 3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Gradients of one minibatch, then `steps` Adam steps, on the CUDA engine against the
    CPU reference, all in float64; the largest relative errors and whether they pass."""
    g = mlp(list(sizes), activation="relu", bias=True, weight_decay=weight_decay)
    p0 = init_params(g, seed, "float64")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.int64)
    opt = make_optimizer("adam", lr=1e-3)
    want_j, want_g = value_and_grad(g, p0, {"x": x, "y": y})
    eng = Engine(
        partition(g, pipeline.stages),
        {k: v.copy() for k, v in p0.items()},
        opt,
        transport=pipeline.transport,
        microbatches=pipeline.microbatches,
        max_rows=len(x),
        device="cuda",
    )
    try:
        got_j, got_g = eng.value_and_grad(x, y)
        ref = {k: v.copy() for k, v in p0.items()}
        state = init_state(opt, ref)
        for t in range(1, steps + 1):
            _, gr = value_and_grad(g, ref, {"x": x, "y": y})
            reference_step(opt, ref, gr, state, t)
            eng.step(x, y)
        got_p = eng.get_params()
    finally:
        eng.close()
    out = {
        "sizes": list(sizes),
        "batch": len(x),
        "pipeline": pipeline.name,
        "J_rel_err": abs(got_j - want_j) / max(abs(want_j), 1e-300),
        "grad_rel_err": max(rel_err(got_g[k], want_g[k]) for k in want_g),
        "steps": steps,
        "param_rel_err": max(rel_err(got_p[k], ref[k]) for k in ref),
    }
    worst = max(out["J_rel_err"], out["grad_rel_err"], out["param_rel_err"])
    out["passed"] = bool(worst <= TOLERANCE)
    return out
