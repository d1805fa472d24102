"""First-step cost in fresh processes: kernels compiled into an empty cache, then loaded from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import graphpart
from graphpart.tools.bench.contenders import SIZES

# What each fresh process runs: import, build the engine, take two steps; prints the times.
_CODE = (
    "import json, sys, time\n"
    "t0 = time.perf_counter()\n"
    "import numpy as np\n"
    "from graphpart.tools.bench import init_mlp_params, make_graphpart\n"
    "sizes, batch, dtype, act = json.loads(sys.argv[1])\n"
    "p = init_mlp_params(sizes, act, True, dtype)\n"
    "rng = np.random.default_rng(0)\n"
    "x = rng.standard_normal((batch, sizes[0])).astype(dtype)\n"
    "y = rng.integers(0, sizes[-1], batch)\n"
    "t1 = time.perf_counter()\n"
    "eng = make_graphpart(p, sizes, batch, act, True, 'adam')\n"
    "t2 = time.perf_counter(); eng.step(x, y); t3 = time.perf_counter()\n"
    "eng.step(x, y); t4 = time.perf_counter()\n"
    "print(json.dumps({'import_s': t1 - t0, 'build_s': t2 - t1, 'first_step_s': t3 - t2,"
    " 'second_step_s': t4 - t3}))\n"
)


def measure_startup(
    sizes: Sequence[int] = SIZES,
    batch: int = 256,
    dtype: str = "float32",
    activation: str = "relu",
    runs: int = 2,
) -> list[dict[str, float]]:
    """First-step cost in fresh processes sharing a fresh, empty NUMBA_CACHE_DIR.

    Run 1 compiles the kernels (and writes the cache); later runs load them from the cache.
    Each entry: import_s (numpy, graphpart), build_s (the engine; its workers compile or load
    every kernel they use), first_step_s, second_step_s, process_s (the whole process).
    """
    root = str(Path(graphpart.__file__).resolve().parent.parent)  # the folder holding graphpart
    out = []
    with tempfile.TemporaryDirectory(prefix="graphpart-numba-cache-") as cache:
        env = {
            **os.environ,
            "NUMBA_CACHE_DIR": cache,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        arg = json.dumps([list(sizes), batch, dtype, activation])
        for _ in range(runs):
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", _CODE, arg],
                env=env,
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            )
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
            rec["process_s"] = time.perf_counter() - t
            out.append(rec)
    return out
