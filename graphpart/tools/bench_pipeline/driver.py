"""The pipeline benchmark's run: transfers, one process, the K=2 pipelines, and their targets."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphpart.engines import start_ray
from graphpart.tools.bench_pipeline.throughput import measure_pipeline, measure_single
from graphpart.tools.bench_pipeline.transfer import measure_transfer

SIZES = (784, 1024, 1024, 1024, 10)


def run(
    sizes: Sequence[int] = SIZES,
    batch: int = 256,
    dtype: str = "float32",
    microbatches: Sequence[int] = (1, 2, 4, 8),
    schedules: Sequence[str] = ("1f1b", "gpipe"),
    warmup: int = 3,
    steps: int = 15,
    transfer_n: int = 200,
) -> dict[str, Any]:
    """Measure (a) transfers, (b) one process and the K=2 pipelines, (c) the simulator's
    predictions, in one Ray session (a new local one on 2 CPUs, or the one already started)."""
    import ray

    started = start_ray(num_cpus=2)
    try:
        res: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "ray_cpus": ray.cluster_resources().get("CPU"),
                "python": platform.python_version(),
                "ray": ray.__version__,
                "numpy": np.__version__,
                "load_avg_start": os.getloadavg(),
            },
            "model": {
                "sizes": list(sizes),
                "batch": batch,
                "dtype": dtype,
                "stages": 2,
                "optimizer": "adam",
            },
        }
        res["transfer"] = t = measure_transfer(transfer_n)
        comm = {
            "tasks": t["tasks_pipelined_per_item_ms"] / 1e3,
            "push": t["push_hop_ms"] / 1e3,
            "compiled": t["compiled_round_trip_ms"] / 1e3,
        }
        res["single"] = measure_single(sizes, batch, dtype, warmup, steps)
        res["pipeline"] = measure_pipeline(
            sizes, batch, dtype, microbatches, schedules, warmup, steps, comm
        )
        best1 = max(r["samples_per_s"] for r in res["single"])
        for r in res["pipeline"]:
            r["speedup_vs_best_single"] = r["samples_per_s"] / best1
        res["machine"]["load_avg_end"] = os.getloadavg()
        res["targets"] = {
            "transfer_under_1ms": t["target_met"],
            "throughput_within_10pct_of_simulator": {
                f"{r['engine']}/{r['schedule']}/M={r['microbatches']}": r["target_met"]
                for r in res["pipeline"]
            },
        }
        return res
    finally:
        if started:
            ray.shutdown()
