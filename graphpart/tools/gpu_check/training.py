"""Whole training runs on the GPU and on the CPU from the same config: equal test accuracy.

Each run is an ordinary `graphpart train` run (through `graphpart.run.session.train`) in a
temporary run directory; only `pipeline.device` differs between the two (and, for a
pipeline on the GPU, the stages: the CPU run takes one stage with the same micro-batches,
which is the same arithmetic up to the order of float sums).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

from graphpart.run.session import train

ACCURACY_TOLERANCE = 0.01  # float32 sums in another order may flip a few test predictions


def _train(config: str | None, overrides: Mapping[str, Any], root: str) -> dict[str, Any]:
    run = train(config, overrides={**overrides, "run.dir": root}, log=lambda _msg: None)
    s = run.summary
    keys = ("test_accuracy", "test_loss", "final_loss", "epochs", "steps", "train_s", "stages")
    return {k: s.get(k) for k in keys}


def compare_training(
    config: str | None, overrides: Mapping[str, Any], gpu_stages: int = 1
) -> dict[str, Any]:
    """Train `config` (None: the digits default) with `overrides` on the CPU (one stage) and on
    the GPU (`gpu_stages` stages); both summaries and whether the accuracies agree."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as root:
        cpu = _train(config, {**overrides, "pipeline.device": "cpu", "pipeline.stages": 1}, root)
        gpu_over = {**overrides, "pipeline.device": "cuda", "pipeline.stages": gpu_stages}
        gpu = _train(config, gpu_over, root)
    out: dict[str, Any] = {
        "config": os.path.basename(config) if config else "digits (default)",
        "overrides": dict(overrides),
        "cpu": cpu,
        "gpu": gpu,
        "tolerance": ACCURACY_TOLERANCE,
    }
    a, b = cpu["test_accuracy"], gpu["test_accuracy"]
    out["accuracy_diff"] = None if a is None or b is None else b - a
    out["passed"] = out["accuracy_diff"] is not None and abs(out["accuracy_diff"]) <= (
        ACCURACY_TOLERANCE
    )
    return out
