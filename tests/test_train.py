"""The training driver: reproducible runs, checkpoints that resume exactly, clean failures.

Contract: the same config and seed give the same parameters; training E1 epochs, stopping, and
resuming to E2 gives exactly the parameters of an uninterrupted E2-epoch run, also under a
different stage count; a run that diverges (non-finite J, naming the step and stage, or an
epoch loss over train.divergence times the best) stops before writing a checkpoint from it,
keeping the last good one; checkpoints are written atomically and a checkpoint of another model
is refused; summary.json says running / completed / failed / interrupted; --resume extends a
finished run only to more epochs, takes overrides (lr, epochs, micro-batches) and records them,
refuses model/data changes, removes temporaries and drops metrics rows past the checkpoint; a
plan over the memory budget is refused before anything is written. metrics.jsonl rows carry a
kind ("step" every train.log_every steps, "epoch" at each epoch's end) and the keys the README
documents; rows without a kind (older runs) are told apart by their keys.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from graphpart.errors import ConfigError, Diverged, StageFailure
from graphpart.ir import mlp
from graphpart.run import trainer as train_mod
from graphpart.run.checkpoint import RunDir, atomic_write, load_checkpoint, save_checkpoint
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


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_same_seed_same_params(tmp_path):
    a = _params(train(_cfg(tmp_path), progress=False, log=lambda m: None))
    b = _params(train(_cfg(tmp_path), progress=False, log=lambda m: None))
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_resume_equals_uninterrupted(tmp_path):
    full = _params(train(_cfg(tmp_path, **{"train.epochs": 3}), progress=False, log=lambda m: None))
    part = train(_cfg(tmp_path, **{"train.epochs": 1}), progress=False, log=lambda m: None)
    cfg = load_config(str(Path(part["run_dir"]) / "config.toml"), {"train.epochs": 3})
    resumed = train(cfg, progress=False, log=lambda m: None, resume=part["run_dir"])
    got = _params(resumed)
    assert resumed["steps"] == 3 * 23
    for k in full:
        np.testing.assert_allclose(got[k], full[k], rtol=0, atol=1e-12)


def _status(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_divergence_is_reported(tmp_path):
    cfg = _cfg(tmp_path, **{"train.lr": 1e200, "train.optimizer": "sgd", "train.momentum": 0.0})
    with pytest.raises(
        Diverged,
        match=r"at step \d+ \(epoch 1\), first in stage 0's .* the first non-finite value of "
        r"the graph is parameter W\d \(stage 0\)",
    ):
        train(cfg, progress=False, log=lambda m: None)
    (run,) = tmp_path.iterdir()
    assert not (run / "checkpoint.npz").exists()  # nothing written from non-finite numbers
    st = _status(run)
    assert st["state"] == "failed" and "Diverged" in st["message"]


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_an_exploding_loss_stops_before_its_checkpoint(tmp_path):
    """Adam at lr 1e6 stays finite but useless: the run stops, the good checkpoint stays."""
    good = train(_cfg(tmp_path, **{"train.epochs": 1}), progress=False, log=lambda m: None)
    run = Path(good["run_dir"])
    before = (run / "checkpoint.npz").read_bytes()
    cfg = _cfg(tmp_path, **{"train.epochs": 3, "train.lr": 1e6})
    with pytest.raises(Diverged, match="exploded|not finite|became"):
        train(cfg, progress=False, log=lambda m: None, resume=run)
    assert (run / "checkpoint.npz").read_bytes() == before
    assert _status(run)["state"] == "failed"


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_run_directory_says_its_state(tmp_path, monkeypatch):
    s = train(_cfg(tmp_path), progress=False, log=lambda m: None)
    assert _status(Path(s["run_dir"]))["state"] == "completed"
    calls = []

    def interrupt(*a, **k):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, **{"run.name": "int"}), progress=False, log=lambda m: None)
    st = _status(tmp_path / "int")
    assert st["state"] == "interrupted" and "--resume" in st["message"]


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_resume_extends_a_finished_run_with_overrides(tmp_path):
    first = train(_cfg(tmp_path), progress=False, log=lambda m: None)
    run = Path(first["run_dir"])
    with pytest.raises(ConfigError, match=r"finished 2 epoch\(s\).*--epochs N with N > 2"):
        train(_cfg(tmp_path), progress=False, log=lambda m: None, resume=run)
    (run / ".checkpoint.npz.tmp-12345").write_bytes(b"half")
    more = _cfg(tmp_path, **{"train.epochs": 3, "train.lr": 5e-4, "pipeline.microbatches": 2})
    out = train(more, progress=False, log=lambda m: None, resume=run)
    assert out["steps"] > first["steps"] and _status(run)["state"] == "completed"
    assert not list(run.glob(".*.tmp-*"))
    saved = load_config(str(run / "config.toml"))
    assert saved.train.lr == 5e-4 and saved.train.epochs == 3 and saved.pipeline.microbatches == 2
    with pytest.raises(ConfigError, match="model.hidden was"):
        train(_cfg(tmp_path, **{"train.epochs": 4, "model.hidden": [8]}), resume=run)


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_resume_drops_metrics_rows_after_the_checkpoint(tmp_path):
    first = train(_cfg(tmp_path, **{"train.log_every": 5}), progress=False, log=lambda m: None)
    run = Path(first["run_dir"])
    rows = (run / "metrics.jsonl").read_text().splitlines()
    # a crash between the metrics append and the checkpoint: a row past the checkpoint's step
    with open(run / "metrics.jsonl", "a") as f:
        row = {"kind": "step", "step": first["steps"] + 7, "epoch": 3, "loss": 1.0}
        f.write(json.dumps(row) + "\n")
    train(_cfg(tmp_path, **{"train.epochs": 3, "train.log_every": 5}), resume=run, progress=False)
    after = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for kind in ("step", "epoch"):  # each kind's steps rise, none twice
        steps = [r["step"] for r in after if r["kind"] == kind]
        assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps
    assert len(after) > len(rows) and 1.0 not in [r.get("loss") for r in after]


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_metrics_rows_have_a_kind_and_the_documented_keys(tmp_path):
    out = train(_cfg(tmp_path, **{"train.log_every": 4}), progress=False, log=lambda m: None)
    run = RunDir(Path(out["run_dir"]))
    rows = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    common = {"kind", "step", "epoch", "time"}
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(steps) + len(epochs) == len(rows) and len(epochs) == 2
    assert all(set(r) == common | {"loss", "L", "s"} for r in steps)
    assert [r["step"] for r in steps] == list(range(4, out["steps"] + 1, 4))
    want = common | {"train_loss", "test_loss", "test_accuracy", "epoch_s"}
    assert all(set(r) == want for r in epochs)
    assert epochs[-1]["test_accuracy"] == out["test_accuracy"]
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    # rows written before the kind field: told apart by their keys
    with open(run.path / "metrics.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({k: v for k, v in r.items() if k != "kind"}) + "\n")
    assert run.read_metrics() == rows
    assert run.last_epoch_metrics(out["steps"]) == epochs[-1]
    assert run.last_epoch_metrics(out["steps"] - 1) == epochs[0]
    run.truncate_metrics(epochs[0]["step"])
    assert run.read_metrics() == [r for r in rows if r["step"] <= epochs[0]["step"]]


@pytest.mark.slow  # in process, but a second or more: the slow lane
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


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_one_stage_micro_batches_are_gradient_accumulation(tmp_path):
    """c of `graphpart compare`: M micro-batches on one device = the full-batch step."""
    full = _params(train(_cfg(tmp_path), progress=False, log=lambda m: None))
    acc = _cfg(tmp_path, **{"pipeline.microbatches": 4})
    got = _params(train(acc, progress=False, log=lambda m: None))
    assert (
        max(float(np.max(np.abs(got[k] - full[k]) / np.max(np.abs(full[k])))) for k in full) < 1e-10
    )


def _faulty(monkeypatch, at_step: int, sig: int, stage: int = 1) -> list[int]:
    """Make train's engines send `sig` to one stage's process before step `at_step`, once."""
    real, seen, hit = train_mod.make_engine, [0], []

    def make(s, params, keep_events=False):
        eng = real(s, params, keep_events)
        step = eng.step

        def faulty(x, y, update=True):
            seen[0] += 1
            if seen[0] == at_step and not hit:
                pid = eng.transport.info[stage]["pid"]
                hit.append(pid)
                os.kill(pid, sig)
            return step(x, y, update)

        eng.step = faulty
        return eng

    monkeypatch.setattr(train_mod, "make_engine", make)
    return hit


def _pipeline(tmp_path: Path, **over):
    return _cfg(tmp_path, **{"pipeline.stages": 2, "train.epochs": 3, **over})


def test_a_killed_stage_is_restarted_from_the_checkpoint(tmp_path, monkeypatch, ray_session):
    """train.max_failures: the run goes on and ends with the uninterrupted run's parameters."""
    clean = _params(train(_pipeline(tmp_path), progress=False, log=lambda m: None))
    hit = _faulty(monkeypatch, at_step=30, sig=signal.SIGKILL)  # in epoch 2 of 3
    msgs: list[str] = []
    out = train(_pipeline(tmp_path, **{"train.max_failures": 1}), progress=False, log=msgs.append)
    assert hit and out["failures_recovered"] == 1
    assert any(
        "stage 1" in m and "restarting the stages from the checkpoint of epoch 1" in m for m in msgs
    ), msgs
    got = _params(out)
    assert all(np.array_equal(clean[k], got[k]) for k in clean)  # bit for bit
    rows = [
        json.loads(x) for x in (Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_a_killed_worker_of_a_2d_run_is_restarted_bit_identical(tmp_path, monkeypatch, ray_session):
    """R x K (2 replicas of 2 stages): a killed worker (replica 1, stage 1) is named, and with
    train.max_failures the run restarts every worker from the checkpoint and ends with the
    uninterrupted run's parameters, bit for bit (issue 24 item 6)."""
    grid = {"pipeline.data_parallel": 2, "pipeline.microbatches": 2}
    clean = _params(train(_pipeline(tmp_path, **grid), progress=False, log=lambda m: None))
    hit = _faulty(monkeypatch, at_step=30, sig=signal.SIGKILL, stage=3)  # r K + k = 3
    msgs: list[str] = []
    out = train(
        _pipeline(tmp_path, **grid, **{"train.max_failures": 1}), progress=False, log=msgs.append
    )
    assert hit and out["failures_recovered"] == 1
    assert any("replica 1, stage 1" in m and "checkpoint of epoch 1" in m for m in msgs), msgs
    got = _params(out)
    assert all(np.array_equal(clean[k], got[k]) for k in clean)  # bit for bit


def test_a_stalled_stage_ends_the_run_with_its_name(tmp_path, monkeypatch, ray_session):
    """kill -STOP one stage: a one-line failure naming it within seconds, never a hang."""
    hit = _faulty(monkeypatch, at_step=5, sig=signal.SIGSTOP)
    t0 = time.monotonic()
    seen = r"stage 1 stopped answering: its process is stopped or gone \(seen by its process state"
    with pytest.raises(StageFailure, match=seen + r" \d+\.\d s into step \d+\)"):
        train(
            _pipeline(tmp_path, **{"pipeline.step_timeout": 3.0}),
            progress=False,
            log=lambda m: None,
        )
    assert hit and time.monotonic() - t0 < 40
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    st = _status(run)
    assert st["state"] == "failed" and "--resume" in st["message"]
    gone = time.monotonic() + 5  # no stage process outlives the run
    while psutil.pid_exists(hit[0]) and psutil.Process(hit[0]).status() != "zombie":
        assert time.monotonic() < gone, "the stopped stage's process outlived the run"
        time.sleep(0.1)


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_resume_finishes_a_run_stopped_after_its_last_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C between the last epoch's checkpoint and the end: --resume completes the run."""
    real = RunDir.save_params

    def interrupted(self, params):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "save_params", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, **{"run.name": "r"}), progress=False, log=lambda m: None)
    run = tmp_path / "r"
    assert _status(run)["state"] == "interrupted" and not (run / "params.npz").exists()
    monkeypatch.setattr(RunDir, "save_params", real)
    out = train(_cfg(tmp_path), progress=False, log=lambda m: None, resume=run)
    assert out["state"] == "completed" and out["final_loss"] is not None
    assert (run / "params.npz").exists()


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_each_run_draws_its_loss_curves(tmp_path):
    out = train(_cfg(tmp_path), progress=False, log=lambda m: None)
    png = Path(out["run_dir"]) / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- faults, third round ------------------------------------------------------------------------


def test_a_run_directory_has_one_writer(tmp_path):
    """The writer lock: a second opener is refused in one line naming the live pid and host;
    released, the directory opens again (the OS frees it when the process dies)."""
    first = RunDir.create(tmp_path, "r")
    (first.path / "config.toml").write_text("")
    with pytest.raises(ConfigError, match=rf"is being written by pid {os.getpid()} on "):
        RunDir.open_existing(first.path)
    first.unlock()
    RunDir.open_existing(first.path).unlock()


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_a_resume_while_the_run_trains_is_refused(tmp_path):
    """`--resume R` while R trains (here: from an epoch callback of R itself) is refused, and
    R goes on to complete with its metrics in order, each epoch once."""
    cfg = _cfg(tmp_path, **{"train.epochs": 3, "run.name": "r"})
    refused = []

    def second_writer(m):
        if m["epoch"] == 1:
            with pytest.raises(ConfigError, match="is being written by pid") as e:
                train(cfg, progress=False, log=lambda m: None, resume=tmp_path / "r")
            refused.append(str(e.value))

    summary = train(cfg, progress=False, log=lambda m: None, on_epoch=second_writer)
    assert refused and summary["state"] == "completed"
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2, 3]


@pytest.mark.slow  # in process, but a second or more: the slow lane
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_overflowing_optimizer_state_is_never_checkpointed(tmp_path, dtype):
    """y = 1e30 everywhere: float32 gradients square to inf in Adam's second moment while the
    parameters stay finite: Diverged, and no checkpoint.npz. float64 holds the squares: the
    run completes (its loss never grows; it is merely large), every checkpointed array finite."""
    rng = np.random.default_rng(0)
    path = tmp_path / "reg.npz"
    np.savez(path, X=rng.standard_normal((2000, 16)), y=np.full((2000, 1), 1e30))
    cfg = _cfg(
        tmp_path,
        **{
            "data.source": str(path),
            "model.loss": "mse",
            "train.dtype": dtype,
            "train.epochs": 3,
            "run.name": "r",
        },
    )
    if dtype == "float64":
        assert train(cfg, progress=False, log=lambda m: None)["state"] == "completed"
        with np.load(tmp_path / "r" / "checkpoint.npz") as z:
            assert all(np.isfinite(z[k]).all() for k in z.files if k != "meta")
        return
    with pytest.raises(Diverged, match=r"optimizer state \d of parameter \w+ \(stage 0\)") as e:
        train(cfg, progress=False, log=lambda m: None)
    assert "no checkpoint was written" in str(e.value)
    assert not (tmp_path / "r" / "checkpoint.npz").exists()
    assert _status(tmp_path / "r")["state"] == "failed"


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_a_step_that_explodes_is_divergence(tmp_path):
    """Adam at lr 1: epoch 1's mean stays under 1000x its first step, but a step is thousands
    of times the best one: Diverged, naming the step."""
    over = {"train.lr": 1.0, "train.epochs": 10, "train.dtype": "float32"}
    cfg = _cfg(tmp_path, **over, **{"model.hidden": [64, 64, 64]})
    with pytest.raises(Diverged, match=r"the loss exploded: step \d+ \(epoch 1\) has J ="):
        train(cfg, progress=False, log=lambda m: None)


def _enospc(monkeypatch, name: str) -> None:
    """Make atomic writes of `name` fail as a full disk does."""
    import errno

    from graphpart.run import checkpoint as ck_mod

    real = ck_mod.os.replace

    def replace(src, dst):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(ck_mod.os, "replace", replace)


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_a_full_disk_names_the_file_and_the_run_says_failed(tmp_path, monkeypatch):
    """ENOSPC writing the checkpoint: the error names checkpoint.npz's path; summary.json says
    failed (not running); no temporary file is left."""
    _enospc(monkeypatch, "checkpoint.npz")
    cfg = _cfg(tmp_path, **{"run.name": "r"})
    with pytest.raises(OSError, match=r"cannot write .*r/checkpoint.npz: No space left"):
        train(cfg, progress=False, log=lambda m: None)
    st = _status(tmp_path / "r")
    assert st["state"] == "failed" and "No space left" in st["message"]
    assert not list((tmp_path / "r").glob(".*.tmp-*"))


def test_a_full_disk_at_start_leaves_no_run_directory(tmp_path, monkeypatch):
    """ENOSPC writing config.toml: the run directory it had just made is removed (a directory
    that leads nowhere would block the same --name)."""
    _enospc(monkeypatch, "config.toml")
    with pytest.raises(OSError, match="config.toml: No space left"):
        train(_cfg(tmp_path, **{"run.name": "r"}), progress=False, log=lambda m: None)
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_without_its_optimizer_arrays_is_one_line(tmp_path):
    """A checkpoint missing an optimizer array, or with one of the wrong shape: a ConfigError
    naming the parameter."""
    g = mlp([4, 3, 2])
    params = {v.name: np.zeros(v.shape) for v in g.params}
    state = [{"params": params, "opt": {k: [np.zeros_like(w)] for k, w in params.items()}}]
    state[0]["steps"] = 1
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, state, None, epoch=1, steps=1)
    with pytest.raises(
        ConfigError, match=r"'W1' has 1 optimizer array\(s\), the optimizer needs 2"
    ):
        load_checkpoint(path, g, state_slots=2)
    state[0]["opt"]["W1"] = [np.zeros((1, 1))]
    save_checkpoint(path, state, None, epoch=1, steps=1)
    with pytest.raises(ConfigError, match=r"an optimizer array of 'W1' has shape \(1, 1\)"):
        load_checkpoint(path, g, state_slots=1)


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_a_resume_is_recorded_and_drawn(tmp_path):
    """--resume writes a resume row at the checkpoint's step with what changed; curves.png is
    drawn with it."""
    part = train(_cfg(tmp_path, **{"train.epochs": 1}), progress=False, log=lambda m: None)
    run = Path(part["run_dir"])
    cfg = load_config(str(run / "config.toml"), {"train.epochs": 2, "train.lr": 1e-3})
    train(cfg, progress=False, log=lambda m: None, resume=run)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    (resume,) = [r for r in rows if r["kind"] == "resume"]
    assert resume["step"] == 23 and resume["epoch"] == 1
    assert resume["changed"] == {"train.epochs": [1, 2], "train.lr": [0.003, 0.001]}
    assert (run / "curves.png").stat().st_size > 0


def test_a_stage_that_dies_during_evaluation_is_named(tmp_path, monkeypatch, ray_session):
    """SIGKILL a stage as the epoch's evaluation starts: StageFailure naming the stage in one
    line (Ray's advice trimmed), and summary.json's message is that line with the resume
    hint."""
    real = train_mod.make_engine
    for stage in (0, 1):

        def make(s, params, keep_events=False, stage=stage):
            eng = real(s, params, keep_events)
            predict = eng.predict

            def dying(x, chunk=None):
                os.kill(eng.transport.info[stage]["pid"], signal.SIGKILL)
                return predict(x, chunk)

            eng.predict = dying
            return eng

        monkeypatch.setattr(train_mod, "make_engine", make)
        cfg = _pipeline(tmp_path, **{"run.name": f"e{stage}", "train.epochs": 1})
        with pytest.raises(StageFailure) as e:
            train(cfg, progress=False, log=lambda m: None)
        msg = str(e.value)
        assert msg.startswith(f"stage {stage}'s worker process died (") and "\n" not in msg
        assert "OOM" not in msg and "--resume" in msg
        assert _status(tmp_path / f"e{stage}")["message"] == msg
