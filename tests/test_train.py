"""The training driver: reproducible runs, checkpoints that resume exactly, clean failures.

Contract: the same config and seed give the same parameters; training E1 epochs, stopping, and
resuming to E2 gives exactly the parameters of an uninterrupted E2-epoch run, also under a
different stage count; a run that diverges stops with an error naming the step; checkpoints are
written atomically and a checkpoint of another model is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphpart.errors import ConfigError
from graphpart.ir import mlp
from graphpart.run.checkpoint import RunDir, atomic_write, load_checkpoint
from graphpart.run.config import load_config
from graphpart.run.train import train


def _cfg(tmp_path: Path, **over):
    base = {
        "train.epochs": 2,
        "model.hidden": [16],
        "run.dir": str(tmp_path),
        "train.dtype": "float64",
    }
    base.update(over)
    return load_config(None, base)


def _params(summary) -> dict:
    with np.load(Path(summary["run_dir"]) / "params.npz") as z:
        return {k: z[k] for k in z.files}


def test_same_seed_same_params(tmp_path):
    a = _params(train(_cfg(tmp_path), progress=False, log=lambda m: None))
    b = _params(train(_cfg(tmp_path), progress=False, log=lambda m: None))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_equals_uninterrupted(tmp_path):
    full = _params(train(_cfg(tmp_path, **{"train.epochs": 3}), progress=False, log=lambda m: None))
    part = train(_cfg(tmp_path, **{"train.epochs": 1}), progress=False, log=lambda m: None)
    cfg = load_config(str(Path(part["run_dir"]) / "config.toml"), {"train.epochs": 3})
    resumed = train(cfg, progress=False, log=lambda m: None, resume=part["run_dir"])
    got = _params(resumed)
    assert resumed["steps"] == 3 * 23
    for k in full:
        np.testing.assert_allclose(got[k], full[k], rtol=0, atol=1e-12)


def test_divergence_is_reported(tmp_path):
    cfg = _cfg(tmp_path, **{"train.lr": 1e200, "train.optimizer": "sgd", "train.momentum": 0.0})
    with pytest.raises(FloatingPointError, match="step"):
        train(cfg, progress=False, log=lambda m: None)


def test_checkpoint_of_other_model_is_refused(tmp_path):
    s = train(_cfg(tmp_path, **{"train.epochs": 1}), progress=False, log=lambda m: None)
    other = mlp([64, 17, 10], bias=True)
    with pytest.raises(ConfigError, match="W1"):
        load_checkpoint(Path(s["run_dir"]) / "checkpoint.npz", other)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_run_dirs_are_unique(tmp_path):
    a, b = RunDir.create(tmp_path), RunDir.create(tmp_path)
    assert a.path != b.path and a.path.is_dir() and b.path.is_dir()


def test_a_plan_over_the_memory_budget_is_refused_before_anything_is_written(tmp_path):
    cfg = _cfg(tmp_path, **{"pipeline.memory_budget": "4KiB"})
    with pytest.raises(ConfigError, match=r"does not fit: needs .* on device 0 .* budget 4.00 KiB"):
        train(cfg, progress=False, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_one_stage_micro_batches_are_gradient_accumulation(tmp_path):
    """c of `graphpart compare`: M micro-batches on one device = the full-batch step."""
    full = _params(train(_cfg(tmp_path), progress=False, log=lambda m: None))
    acc = _cfg(tmp_path, **{"pipeline.microbatches": 4})
    got = _params(train(acc, progress=False, log=lambda m: None))
    assert (
        max(float(np.max(np.abs(got[k] - full[k]) / np.max(np.abs(full[k])))) for k in full) < 1e-10
    )
