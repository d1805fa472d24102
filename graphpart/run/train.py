"""The training driver: config -> data, graph, plan, engine -> epochs of steps -> run directory."""

from __future__ import annotations

import array
import dataclasses
import io
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graphpart.engines import (
    DataParallel,
    Engine,
    Rss,
    StageStats,
    StepResult,
    describe_cluster,
    measured_costs,
    resolve_transport,
)
from graphpart.errors import ConfigError, Diverged, StageFailure, Terminated
from graphpart.ir import Graph, mlp
from graphpart.optim import Optimizer, make_optimizer
from graphpart.params import Init, Params
from graphpart.plan.batching import microbatch_rows
from graphpart.plan.memory import (
    MemoryPrediction,
    budget_problem,
    predict,
    predict_data_parallel,
    stage_memory_cost,
)
from graphpart.plan.partition import Plan, partition
from graphpart.run import data as gdata
from graphpart.run import sigterm
from graphpart.run.checkpoint import RunDir, atomic_write, load_checkpoint, save_checkpoint
from graphpart.run.config import Config, dump_toml, load_config
from graphpart.run.diagnose import first_non_finite
from graphpart.run.metrics import epoch_row, of_kind, resume_row, step_row
from graphpart.run.shape import DataShape, dataset_matches, shape_of
from graphpart.run.tensorboard import EventLog
from graphpart.run.tensorboard import require as require_tensorboard
from graphpart.units import parse_bytes


@dataclass
class Setup:
    """What a run decides before it starts. `shape` is the data's shape, read without loading
    it; `dataset` loads the data the first time it is asked for (plan and graph never ask)."""

    config: Config
    shape: DataShape
    graph: Graph
    plan: Plan
    optimizer: Optimizer
    _dataset: gdata.Dataset | None = dataclasses.field(default=None, repr=False)
    notes: tuple[str, ...] = ()  # what setup changed of the config, one line each, for the user

    @property
    def dataset(self) -> gdata.Dataset:
        if self._dataset is None:
            ds = load_dataset(self.config)
            differs = dataset_matches(ds, self.shape)
            if differs:  # the quick reading and the loader disagree: a bug, not a user error
                raise RuntimeError(f"data.source={self.config.data.source!r}: {differs}")
            self._dataset = ds
        return self._dataset


def data_kwargs(cfg: Config) -> dict[str, Any]:
    """What graphpart.run.data.load needs of `cfg` besides the source (data.n_classes = 0:
    synthetic data's 10, a file's classes from its labels)."""
    d, t = cfg.data, cfg.train
    task = "regression" if cfg.model.loss == "mse" else "classification"
    kw: dict[str, Any] = dict(dtype=t.dtype, test_fraction=d.test_fraction, seed=t.seed)
    if d.source == "synthetic":
        q = d.n_classes or 10
        kw.update(n_samples=d.n_samples, n_features=d.n_features, n_classes=q, task=task)
    elif d.source.lower().endswith((".npz", ".csv")):
        kw.update(task=task)
        if d.n_classes and task == "classification":
            kw.update(n_classes=d.n_classes)
    return kw


def load_dataset(cfg: Config) -> gdata.Dataset:
    """The data `cfg` trains on, loaded (graphpart.run.data)."""
    return gdata.load(cfg.data.source, **data_kwargs(cfg))


def data_shape(cfg: Config) -> DataShape:
    """The shape of the data `cfg` trains on, read without loading it (graphpart.run.shape)."""
    return shape_of(cfg.data.source, **data_kwargs(cfg))


def setup(cfg: Config) -> Setup:
    """Everything decided before a run starts (pure: no Ray, no training, and of the data only
    its shape is read)."""
    ds = data_shape(cfg)
    cfg, notes = clamp_batch(cfg, ds)
    m = cfg.model
    if m.loss == "cross_entropy" and ds.n_classes is None:
        raise ConfigError(
            f"model.loss='cross_entropy' needs class labels, but {ds.name} has "
            "real-valued targets; use model.loss='mse'"
        )
    graph = mlp(
        [ds.n_features, *m.hidden, ds.n_outputs],
        activation=m.activation,
        bias=m.bias,
        loss=m.loss,
        weight_decay=m.weight_decay,
    )
    p = cfg.pipeline
    if p.strategy == "memory":
        plan = _memory_plan(cfg, graph)
    elif p.cost == "measured" and p.strategy == "balanced" and p.stages > 1:
        rows = microbatch_rows(cfg.train.batch_size, p.microbatches)
        times = measured_costs(graph, rows, cfg.train.dtype)
        plan = dataclasses.replace(
            partition(graph, p.stages, "balanced", layer_costs=times),
            strategy="balanced (measured layer times)",
        )
    else:
        plan = partition(graph, p.stages, p.strategy)
    t = cfg.train
    opt = make_optimizer(
        t.optimizer, lr=t.lr, momentum=t.momentum, beta1=t.beta1, beta2=t.beta2, eps=t.eps
    )
    return Setup(cfg, ds, graph, plan, opt, notes=notes)


def clamp_batch(cfg: Config, ds: DataShape) -> tuple[Config, tuple[str, ...]]:
    """A minibatch larger than the training rows is the training rows: buffers are sized from
    the rows a step really has (and the change is said, once)."""
    b = cfg.train.batch_size
    if b <= ds.n_train:
        return cfg, ()
    clamped = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=ds.n_train))
    return clamped, (
        f"warning: train.batch_size={b} exceeds the {ds.n_train} training rows of {ds.name}; "
        f"using {ds.n_train} (one step an epoch)",
    )


def memory_kwargs(cfg: Config) -> dict[str, Any]:
    """What the memory model needs of a config besides the plan (graphpart.plan.memory)."""
    p, t = cfg.pipeline, cfg.train
    return dict(
        batch=t.batch_size,
        microbatches=p.microbatches,
        schedule=p.schedule,
        optimizer=t.optimizer,
        momentum=t.momentum,
        dtype=t.dtype,
        recompute=p.recompute,
    )


def predicted_memory(s: Setup) -> MemoryPrediction:
    """Peak bytes per device and category of the run `s.config` describes (no workers)."""
    cfg = s.config
    if cfg.pipeline.data_parallel > 1:
        t = cfg.train
        return predict_data_parallel(
            s.plan,
            cfg.pipeline.data_parallel,
            batch=t.batch_size,
            optimizer=t.optimizer,
            momentum=t.momentum,
            dtype=t.dtype,
            channels=uses_channels(cfg),
        )
    return predict(s.plan, **memory_kwargs(cfg), channels=uses_channels(cfg))


def uses_channels(cfg: Config) -> bool:
    """Whether workers map shared-memory channel buffers (memory the model counts as boundary):
    a pipeline's neighbours and the driver's feed on the `shm` transport, or data-parallel
    replicas whose ring is not carried by Ray (`push`); all on one node."""
    p = cfg.pipeline
    if not uses_ray(cfg):
        return False
    if p.data_parallel > 1:
        return transport_of(cfg) != "push"
    return transport_of(cfg) == "shm"


def budget_of(cfg: Config) -> int | None:
    """The per-device memory budget in bytes (None: no budget)."""
    b = cfg.pipeline.memory_budget
    return parse_bytes(b) if b.strip() else None


def check_budget(s: Setup) -> None:
    """Refuse a run whose predicted per-device peak exceeds pipeline.memory_budget."""
    budget = budget_of(s.config)
    if budget is None:
        return
    problem = budget_problem(predicted_memory(s), budget)
    if problem:
        raise ConfigError(
            f"pipeline.memory_budget={s.config.pipeline.memory_budget!r}: the plan {problem}; "
            "try more --stages, --recompute true, more --microbatches or a smaller --batch-size "
            "(`graphpart plan --auto` searches them)"
        )


def _memory_plan(cfg: Config, graph: Graph) -> Plan:
    stages = cfg.pipeline.stages
    cost = stage_memory_cost(graph, stages, **memory_kwargs(cfg))
    return partition(graph, stages, "memory", memory_cost=cost)


def transport_of(cfg: Config) -> str:
    """The transport a run uses (`auto` resolved)."""
    p = cfg.pipeline
    return resolve_transport(p.transport, max(p.stages, p.data_parallel), p.address)


def uses_ray(cfg: Config) -> bool:
    return transport_of(cfg) != "inprocess"


def make_engine(s: Setup, params: Params, keep_events: bool = False) -> Engine | DataParallel:
    """The engine `s.config` asks for. `keep_events`: keep every worker's timeline of
    allocations and actions (the profiler's plots; it grows with every step, so training
    runs leave it off)."""
    p, t = s.config.pipeline, s.config.train
    if p.data_parallel > 1:
        return DataParallel(
            s.plan,
            params,
            s.optimizer,
            replicas=p.data_parallel,
            transport=transport_of(s.config),
            address=p.address,
            max_rows=t.batch_size,
            device=p.device,
            keep_events=keep_events,
            step_timeout=p.step_timeout,
        )
    return Engine(
        s.plan,
        params,
        s.optimizer,
        transport=transport_of(s.config),
        address=p.address,
        microbatches=p.microbatches,
        schedule=p.schedule,
        max_rows=t.batch_size,
        device=p.device,
        recompute=p.recompute,
        keep_events=keep_events,
        step_timeout=p.step_timeout,
    )


def evaluate(
    engine: Engine | DataParallel, ds: gdata.Dataset, X: np.ndarray, y: np.ndarray, loss: str
) -> dict[str, float]:
    """Test loss (and accuracy for classification) from inference logits."""
    o = engine.predict(X).astype(np.float64)
    if loss == "cross_entropy":
        m = o.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(o - m).sum(axis=1, keepdims=True)))[:, 0]
        nll = float(np.mean(lse - o[np.arange(len(y)), y]))
        return {"test_loss": nll, "test_accuracy": float(np.mean(o.argmax(axis=1) == y))}
    return {"test_loss": float(0.5 * np.mean(((o - y) ** 2).sum(axis=1)))}


def check_last_batch(s: Setup) -> None:
    """Data parallelism needs a row per replica in every minibatch, the epoch's last included.

    (A pipeline needs no such rule: a minibatch with fewer rows than micro-batches runs one
    micro-batch per row, the same mathematics.)"""
    p, t = s.config.pipeline, s.config.train
    last = s.shape.n_train % t.batch_size
    if p.data_parallel > 1 and 0 < last < p.data_parallel:
        raise ConfigError(
            f"pipeline.data_parallel={p.data_parallel}: the last minibatch of each epoch has "
            f"{last} row(s) ({s.shape.n_train} training rows, train.batch_size="
            f"{t.batch_size}), fewer than the replicas; choose a batch size that leaves 0 or at "
            f"least {p.data_parallel} rows"
        )


# resuming may change how a run trains (epochs, learning rate, stages, schedule, ...) but not
# what it trains: these keys decide the model, the data and its split, and what the
# checkpoint's optimizer state means
FIXED_ON_RESUME = ("model.", "data.", "train.seed", "train.dtype", "train.optimizer")


def _flat(cfg: Config) -> dict[str, Any]:
    """Every config key by dotted name."""
    return {f"{sec}.{k}": v for sec, keys in cfg.to_dict().items() for k, v in keys.items()}


def fixed_keys(cfg: Config) -> dict[str, Any]:
    """The config keys a resume keeps, by dotted name (kept in every checkpoint)."""
    return {k: v for k, v in _flat(cfg).items() if k.startswith(FIXED_ON_RESUME)}


def _check_resume_changes(old: dict[str, Any], new: Config, run: Path, where: str = "was") -> None:
    b = fixed_keys(new)
    changed = [k for k in b if k in old and old[k] != b[k]]
    if changed:
        k = changed[0]
        raise ConfigError(
            f"--resume {run}: {k} {where} {old[k]!r}, now {b[k]!r}; a resumed run keeps its "
            "model, data, seed, dtype and optimizer (start a new run to change them)"
        )


def _open_resumed(
    resume: str | Path, s: Setup, cfg: Config
) -> tuple[RunDir, dict | None, dict[str, tuple[Any, Any]]]:
    """The run directory to go on with (locked), its checkpoint (None: none yet, so the run
    starts again from the beginning), and what `cfg` changes of its config.toml (key ->
    (old, new)), each checked against `cfg` before anything is written."""
    run = RunDir.open_existing(resume)
    try:
        old_cfg = load_config(str(run.path / "config.toml"))
        _check_resume_changes(fixed_keys(old_cfg), cfg, run.path)
        a, b = _flat(old_cfg), _flat(cfg)
        changed = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
        ck = None
        if run.has_checkpoint:
            ck = load_checkpoint(run.checkpoint_path, s.graph, s.optimizer.state_slots)
            if ck["fixed"] is not None:  # config.toml edited by hand since the checkpoint
                _check_resume_changes(ck["fixed"], cfg, run.path, where="made the checkpoint with")
            done = ck["epoch"]
            finished = _state_of(run) == "completed"
            if done > cfg.train.epochs or (done == cfg.train.epochs and finished):
                raise ConfigError(
                    f"--resume {run.path}: the run has "
                    + ("finished" if finished else "trained")
                    + f" {done} epoch(s) and train.epochs={cfg.train.epochs}; give --epochs N "
                    f"with N > {done} to train on"
                    + ("" if finished else f" (or N = {done} to complete it as it is)")
                )
    except BaseException:
        run.unlock()
        raise
    return run, ck, changed


def train(
    cfg: Config,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    resume: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train as `cfg` says; write the run directory; return the summary.

    With `resume`, continue that run directory from its last checkpoint under `cfg` (which may
    change the epochs, the learning rate, the partition and the schedule: checkpoints are by
    parameter name), recording the new config; a run stopped before its first checkpoint starts
    again from the beginning. `on_epoch` gets each epoch's metrics (the metrics.jsonl row plus
    `train_s`, the training seconds so far) as soon as the epoch ends. summary.json says the
    run's state at every transition (running, completed, failed, interrupted). One process
    writes a run directory at a time (an OS lock; a second is refused naming the first). With
    train.max_failures = N, a stage that dies or stalls is restarted from the last checkpoint
    up to N times, and the run goes on to the same parameters.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if cfg.train.tensorboard:
        require_tensorboard()  # before anything is written
    s = setup(cfg)
    cfg = s.config  # as setup settled it (a batch larger than the data clamped to it)
    _ = s.dataset  # loaded and checked before anything is written
    check_budget(s)
    check_last_batch(s)
    for note in s.notes:
        log(note)
    ck = None
    created = not resume
    if resume:
        run, ck, changed = _open_resumed(resume, s, cfg)
        run.remove_temporaries()
        run.truncate_metrics(ck["steps"] if ck else 0)
        run.append_metrics(
            resume_row(ck["steps"] if ck else 0, ck["epoch"] if ck else 0, _plain(changed))
        )
    else:
        run = RunDir.create(cfg.run.dir, cfg.run.name)
    try:
        try:
            run.write_text("config.toml", dump_toml(cfg))
            run.write_text("plan.json", json.dumps(plan_dict(s.plan, cfg), indent=2))
            run.write_status(
                "running", epochs=cfg.train.epochs, pid=os.getpid(), host=os.uname().nodename
            )
        except OSError:
            if created:  # a run directory that could not even be started leads nowhere
                run.discard()
            raise
        return _train(s, run, ck, progress, log, on_epoch)
    # every way a run ends is written to summary.json (as far as the disk lets)
    except KeyboardInterrupt as e:
        how = "by SIGTERM" if isinstance(e, Terminated) else "by Ctrl-C"
        msg = f"stopped {how}; " + _resume_advice(run)
        _try_status(run, "interrupted", msg)
        raise type(e)(msg) from None
    except StageFailure as e:
        msg = f"{e}; " + _resume_advice(run)
        _try_status(run, "failed", msg)
        raise StageFailure(msg) from None
    except BaseException as e:
        if run.path.is_dir():  # not a directory discarded at start
            _try_status(
                run, "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
        raise
    finally:
        run.unlock()


def _plain(changed: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """JSON-ready values (tuples of hidden sizes as lists)."""

    def v(x: Any) -> Any:
        return list(x) if isinstance(x, tuple) else x

    return {k: (v(a), v(b)) for k, (a, b) in changed.items()}


def _try_status(run: RunDir, state: str, message: str) -> None:
    """Write summary.json's state; a disk that refuses it must not hide why the run ended."""
    try:
        run.write_status(state, message)
    except OSError:
        pass


def _resume_advice(run: RunDir) -> str:
    """What `--resume` will do with this run directory now."""
    if run.has_checkpoint:
        ck = _checkpoint_epoch(run)
        return f"the checkpoint of epoch {ck} is kept: continue with {_resume_hint(run)}"
    return (
        "no epoch had ended, so there is no checkpoint: "
        f"{_resume_hint(run)} starts the run again from the beginning"
    )


def _checkpoint_epoch(run: RunDir) -> str:
    try:
        with np.load(run.checkpoint_path) as z:
            return str(json.loads(z["meta"].tobytes().decode())["epoch"])
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


def _state_of(run: RunDir) -> str:
    try:
        return str(json.loads((run.path / "summary.json").read_text()).get("state", ""))
    except (OSError, ValueError):
        return ""


def _resume_hint(run: RunDir) -> str:
    return f"`graphpart train --resume {run.path}`"


@dataclass
class _Progress:
    """Where a run is: the epoch and step it starts from, what it has done since."""

    epoch: int = 0
    step: int = 0
    samples: int = 0
    train_time: float = 0.0
    first_loss: float | None = None
    best_loss: float = math.inf  # the best epoch's mean train loss
    best_step_loss: float = math.inf  # the best single step's J
    best_accuracy: float = -math.inf  # the best epoch's test accuracy
    rates: array.array = dataclasses.field(
        default_factory=lambda: array.array("d")
    )  # rows/s a step
    first_steps_s: float = 0.0  # wall seconds of this process's first WARM_STEPS steps
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


def _train(
    s: Setup,
    run: RunDir,
    ck: dict[str, Any] | None,
    progress: bool,
    log: Callable[[str], None],
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    t = s.config.train
    st = _Progress(epoch=ck["epoch"], step=ck["steps"]) if ck else _Progress()
    if ck:  # the last epoch's figures, in case no epoch is left to train (a run stopped
        st.metrics = run.last_epoch_metrics(st.step)  # between its last checkpoint and the end)
    n = len(s.dataset.X_train)
    wall0 = time.perf_counter()
    events = EventLog(run.path, run.read_metrics()) if t.tensorboard else None
    try:
        return _attempts(s, run, ck, st, progress, log, on_epoch, n, events, wall0)
    finally:
        if events is not None:
            events.close()


def _attempts(
    s: Setup,
    run: RunDir,
    ck: dict[str, Any] | None,
    st: _Progress,
    progress: bool,
    log: Callable[[str], None],
    on_epoch: Callable[[dict[str, Any]], None] | None,
    n: int,
    events: EventLog | None,
    wall0: float,
) -> dict[str, Any]:
    """Train to the end, restarting failed stages from the last checkpoint as allowed."""
    cfg = s.config
    t, p = cfg.train, cfg.pipeline
    failures = 0
    startup = None
    if uses_ray(cfg):  # Ray start-up takes seconds: say what is happening
        workers = max(p.stages, p.data_parallel)
        log(
            f"starting {workers} {'replica' if p.data_parallel > 1 else 'stage'} worker(s) "
            + (f"on the Ray cluster at {p.address}" if p.address else "on a local Ray")
            + f" ({transport_of(cfg)} transport) ..."
        )
    while True:
        t_start = time.perf_counter()
        params = Init(t.seed, t.dtype)  # each worker makes its own stage's parameters ...
        try:
            with make_engine(s, params) as engine:
                sigterm.restore()  # Ray's start replaced the program's SIGTERM handler
                if startup is None:  # Ray, workers, kernel compile or cache load
                    startup = time.perf_counter() - t_start
                    if p.address:  # say which cluster `auto` (or an address) joined
                        log(f"joined {describe_cluster()} (pipeline.address={p.address!r})")
                if ck:  # ... which set_state then overwrites with the checkpoint's
                    engine.set_state(ck["stages"](s.plan))
                _epochs(s, engine, run, st, progress, log, on_epoch, n, events)
                final = engine.get_params()
                stats = engine.stats()
            break
        except StageFailure as e:
            failures += 1
            if failures > t.max_failures:
                raise
            ck = (
                load_checkpoint(run.checkpoint_path, s.graph)
                if run.checkpoint_path.exists()
                else None
            )
            st = _Progress(  # what this process measured carries over; the place restarts
                epoch=ck["epoch"] if ck else 0,
                step=ck["steps"] if ck else 0,
                train_time=st.train_time,
                samples=st.samples,
                rates=st.rates,
                first_steps_s=st.first_steps_s,
            )
            run.truncate_metrics(st.step)
            if events is not None:
                events.reopen(run.read_metrics())
            log(
                f"{e}; restarting the stages from "
                + (f"the checkpoint of epoch {st.epoch}" if ck else "the start")
                + f" (failure {failures} of train.max_failures={t.max_failures})"
            )
    run.save_params(final)
    write_curves(run)
    wall = time.perf_counter() - wall0
    m = st.metrics
    summary = {
        "state": "completed",
        "run_dir": str(run.path),
        "final_loss": m.get("train_loss"),
        "test_loss": m.get("test_loss"),
        "test_accuracy": m.get("test_accuracy"),
        "epochs": t.epochs,
        "steps": st.step,
        "wall_s": wall,
        "train_s": st.train_time,
        "startup_s": startup or 0.0,
        **_throughput(st),
        "failures_recovered": failures,
        "stages": p.stages,
        "data_parallel": p.data_parallel,
        "microbatches": p.microbatches,
        "schedule": p.schedule,
        "runtime": "ray" if uses_ray(cfg) else "local",
        "transport": transport_of(cfg),
        "stage_stats": [_stage_summary(x) for x in stats],
    }
    run.write_text("summary.json", json.dumps(summary, indent=2))
    return summary


WARM_STEPS = 3  # a run's first steps (buffers, kernels, a compiled graph): start-up, not steady


def _throughput(st: _Progress) -> dict[str, Any]:
    """Steady-state samples/s (the median step's, past the first WARM_STEPS) apart from the
    first steps' time, and the plain mean (samples over training seconds, warm-up included)."""
    steady = st.rates[WARM_STEPS:] if len(st.rates) > WARM_STEPS else st.rates
    return {
        "samples_per_s": statistics.median(steady) if steady else None,
        "samples_per_s_mean": st.samples / st.train_time if st.train_time > 0 else None,
        "first_steps": min(WARM_STEPS, len(st.rates)),
        "first_steps_s": st.first_steps_s,
    }


def _epochs(
    s: Setup,
    engine: Engine | DataParallel,
    run: RunDir,
    st: _Progress,
    progress: bool,
    log: Callable[[str], None],
    on_epoch: Callable[[dict[str, Any]], None] | None,
    n: int,
    events: EventLog | None = None,
) -> None:
    """Train from epoch st.epoch to the last, checkpointing each (st is updated as it goes)."""
    cfg, ds = s.config, s.dataset
    t = cfg.train

    def record(row: dict[str, Any]) -> None:
        run.append_metrics(row)
        if events is not None:
            events.write(row)

    bar = _progress(progress, (t.epochs - st.epoch) * _steps_per_epoch(n, t.batch_size))
    try:
        for epoch in range(st.epoch, t.epochs):
            t0 = time.perf_counter()
            total, count = 0.0, 0
            for idx in gdata.batches(n, t.batch_size, t.seed, epoch):
                t_step = time.perf_counter()
                r = engine.step(ds.X_train[idx], ds.y_train[idx])
                dt = time.perf_counter() - t_step
                if len(st.rates) < WARM_STEPS:
                    st.first_steps_s += dt
                st.rates.append(len(idx) / dt if dt > 0 else math.inf)
                if not math.isfinite(r.J):
                    culprit = _culprit(s, engine, ds.X_train[idx], ds.y_train[idx])
                    raise Diverged(_non_finite(r, st.step + 1, epoch + 1, t.lr, culprit))
                if st.first_loss is None:
                    st.first_loss = r.J
                _check_step(r.J, st, t.divergence, t.lr, epoch + 1)
                st.step += 1
                st.samples += len(idx)
                total += r.J * len(idx)
                count += len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{r.J:.4f}", refresh=False)
                if t.log_every and st.step % t.log_every == 0:
                    record(step_row(st.step, epoch + 1, r.J, r.L, r.s))
            st.train_time += time.perf_counter() - t0
            figures = {
                "train_loss": total / count,
                **evaluate(engine, ds, ds.X_test, ds.y_test, cfg.model.loss),
                "epoch_s": time.perf_counter() - t0,
            }
            metrics = epoch_row(st.step, epoch + 1, figures)
            _check_divergence(metrics, st, t.divergence, t.lr)
            _check_collapse(metrics, st, ds.y_test, t.lr)
            state = engine.get_state()
            _check_finite_state(state, st.step)
            record(metrics)
            save_checkpoint(
                run.checkpoint_path,
                state,
                s.plan,
                epoch=epoch + 1,
                steps=st.step,
                fixed=fixed_keys(cfg),
            )
            st.epoch, st.metrics = epoch + 1, metrics
            if on_epoch is not None:
                on_epoch({**metrics, "train_s": st.train_time})
            msg = (
                f"epoch {epoch + 1:3d}/{t.epochs}  loss {metrics['train_loss']:.4f}"
                f"  test loss {metrics['test_loss']:.4f}"
            )
            if "test_accuracy" in metrics:
                msg += f"  test acc {metrics['test_accuracy']:.4f}"
            (bar.write if bar is not None else log)(msg)
    finally:
        if bar is not None:
            bar.close()


def _culprit(s: Setup, engine: Engine | DataParallel, X: np.ndarray, y: np.ndarray) -> str | None:
    """The first non-finite value of the graph on this minibatch, with the parameters as the
    step left them (the reference autodiff, in this process); None if it cannot tell."""
    try:
        params = {n: w for st in engine.get_state() for n, w in st["params"].items()}
        return first_non_finite(s.plan, params, {"x": X, "y": y})
    except Exception:  # noqa: BLE001 - a diagnosis must not hide the divergence it explains
        return None


def _non_finite(r: StepResult, step: int, epoch: int, lr: float, culprit: str | None = None) -> str:
    """Which stage's part of J became non-finite, at which step, and the first node that did."""
    where = [
        f"stage {k}'s " + ("data loss L" if not math.isfinite(f.loss) else "regulariser s")
        for k, f in enumerate(r.stages)
        if not (math.isfinite(f.loss) and math.isfinite(f.s))
    ]
    return (
        f"objective J became {r.J} at step {step} (epoch {epoch})"
        + (f", first in {where[0]}" if where else "")
        + (
            f"; recomputed on that minibatch with the parameters after the step, the first "
            f"non-finite value of the graph is {culprit}"
            if culprit
            else ""
        )
        + f"; no checkpoint was written from it (the last good one is kept); lower train.lr "
        f"(now {lr})"
    )


def _check_divergence(m: dict[str, Any], st: _Progress, factor: float, lr: float) -> None:
    """Stop before checkpointing an epoch whose loss is non-finite or exploded: its mean train
    loss over `factor` times the best epoch's (or the first step's), or a non-finite test loss."""
    if not math.isfinite(m["test_loss"]):
        raise Diverged(
            f"test loss became {m['test_loss']} after epoch {m['epoch']} (step {m['step']}); "
            f"no checkpoint was written from it (the last good one is kept); lower train.lr "
            f"(now {lr})"
        )
    ref = min(st.best_loss, st.first_loss if st.first_loss is not None else math.inf)
    if factor > 0 and math.isfinite(ref) and m["train_loss"] > factor * max(ref, 1e-12):
        raise Diverged(
            f"the loss exploded: epoch {m['epoch']} (step {m['step']}) averaged "
            f"{m['train_loss']:.4g}, over train.divergence={factor:g} times the run's best "
            f"{ref:.4g}; no checkpoint was written from it (the last good one is kept); lower "
            f"train.lr (now {lr})"
        )
    st.best_loss = min(st.best_loss, m["train_loss"])


def _check_step(J: float, st: _Progress, factor: float, lr: float, epoch: int) -> None:
    """A step whose loss is `factor` times the best step's and worse than the untrained
    model's first step has diverged (the epoch mean can hide it: a few huge steps, then a
    plateau at chance)."""
    ref = st.best_step_loss
    first = st.first_loss if st.first_loss is not None else math.inf
    if factor > 0 and math.isfinite(ref) and J > factor * max(ref, 1e-3 * first) and J > first:
        raise Diverged(
            f"the loss exploded: step {st.step + 1} (epoch {epoch}) has J = {J:.4g}, over "
            f"train.divergence={factor:g} times the run's best step ({ref:.4g}) and above its "
            f"first ({first:.4g}); no checkpoint was written from it (the last good one is "
            f"kept); lower train.lr (now {lr})"
        )
    st.best_step_loss = min(st.best_step_loss, J)


# test accuracy collapsed: the best epoch was at least a quarter of the way from chance to
# perfect, and this one is within 5% of the way from chance
COLLAPSE_FROM, COLLAPSE_TO = 0.25, 0.05


def _check_collapse(m: dict[str, Any], st: _Progress, y_test: np.ndarray, lr: float) -> None:
    """Stop before checkpointing an epoch whose test accuracy fell back to chance (what
    predicting the most common test label scores) after the run had learnt something."""
    acc = m.get("test_accuracy")
    if acc is None or len(y_test) == 0:
        return
    chance = float(np.bincount(np.asarray(y_test, dtype=np.int64)).max() / len(y_test))
    span = 1.0 - chance
    if st.best_accuracy >= chance + COLLAPSE_FROM * span and acc <= chance + COLLAPSE_TO * span:
        raise Diverged(
            f"test accuracy collapsed to chance: epoch {m['epoch']} (step {m['step']}) scored "
            f"{acc:.4f} where the run's best was {st.best_accuracy:.4f} and chance (the most "
            f"common label) is {chance:.4f}; no checkpoint was written from it (the last good "
            f"one is kept); lower train.lr (now {lr})"
        )
    st.best_accuracy = max(st.best_accuracy, acc)


def _check_finite_state(states: list[dict[str, Any]], step: int) -> None:
    """Parameters and optimizer state must be finite before a checkpoint is written (an inf
    Adam second moment freezes the parameters it belongs to while they stay finite)."""
    for k, state in enumerate(states):
        for name, w in state["params"].items():
            if not np.all(np.isfinite(w)):
                raise Diverged(
                    f"parameter {name} (stage {k}) is not finite after step {step}; no "
                    "checkpoint was written from it (the last good one is kept); lower train.lr"
                )
        for name, bufs in state.get("opt", {}).items():
            for i, b in enumerate(bufs):
                if not np.all(np.isfinite(b)):
                    raise Diverged(
                        f"optimizer state {i} of parameter {name} (stage {k}) is not finite "
                        f"after step {step} (the gradients overflowed {b.dtype}: are the "
                        "targets or inputs on a sane scale?); no checkpoint was written from "
                        "it (the last good one is kept); lower train.lr or rescale the data"
                    )


def write_curves(run: RunDir) -> None:
    """curves.png in the run directory: train and test loss (and test accuracy) per epoch,
    from metrics.jsonl's epoch rows."""
    rows = of_kind(run.read_metrics(), "epoch")
    if not rows:
        return
    import matplotlib  # loaded only here: it takes a while to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = "test_accuracy" in rows[0]
    fig, axes = plt.subplots(1, 2 if acc else 1, figsize=(9 if acc else 5, 3.6), squeeze=False)
    e = [r["epoch"] for r in rows]
    ax = axes[0, 0]
    ax.plot(e, [r["train_loss"] for r in rows], marker=".", label="train: objective J = L + s")
    ax.plot(e, [r["test_loss"] for r in rows], marker=".", label="test: data loss L")
    ax.set(xlabel="epoch", ylabel="loss (epoch mean)", yscale="log")
    if acc:
        axes[0, 1].plot(e, [r["test_accuracy"] for r in rows], marker=".", label="test accuracy")
        axes[0, 1].set(xlabel="epoch", ylabel="test accuracy")
    for r in of_kind(run.read_metrics(), "resume"):  # where --resume went on, what it changed
        what = ", ".join(
            f"{k.split('.')[-1]} {a}->{b}"
            for k, (a, b) in r.get("changed", {}).items()
            if k != "train.epochs"
        )
        for a in axes[0]:
            a.axvline(r["epoch"], color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(
            "resumed" + (f": {what}" if what else ""),
            (r["epoch"], 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="grey",
        )
    for a in axes[0]:
        a.legend(fontsize=8)
    fig.suptitle(run.path.name, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(run.path / "curves.png", buf.getvalue())


def _stage_summary(st: StageStats) -> dict:
    return {
        "stage": st.stage,
        "busy_s": round(st.busy.total, 6),
        "forward_s": round(st.busy.forward, 6),
        "backward_s": round(st.busy.backward, 6),
        "finish_s": round(st.busy.finish, 6),
        "allreduce_s": round(st.busy.allreduce, 6),
        "bytes_sent": st.bytes_sent,
        "bytes_received": st.bytes_received,
        "peak_bytes": st.memory.peak_total,  # the ledger: the model's own accounting
        "peak_by_category": dict(st.memory.peak),
        # what the OS measured: the worker process's resident peak over its baseline, and
        # its private + shared growth (file pages, library code first run, left out)
        "resident_baseline": st.rss.baseline,
        "resident_growth": st.rss.peak - st.rss.baseline,
        "resident_allocated": _allocated(st.rss),
    }


def _allocated(r: Rss) -> int | None:
    """Private + shared resident growth since the baseline (Linux), or None where unknown."""
    keys = ("RssAnon", "RssShmem")
    if not all(k in r.parts_now and k in r.parts_baseline for k in keys):
        return None
    return sum(r.parts_now[k] - r.parts_baseline[k] for k in keys)


def _steps_per_epoch(n: int, batch: int) -> int:
    return -(-n // batch)


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr, leave=False)


def plan_dict(plan: Plan, cfg: Config | None = None) -> dict[str, Any]:
    """The plan as plain data (for plan.json and `graphpart plan --json`)."""
    itemsize = np.dtype(cfg.train.dtype if cfg else "float32").itemsize
    out = {
        "strategy": plan.strategy,
        "stages": [
            {
                "stage": st.index,
                "layers": list(st.layers),
                "params": list(st.params),
                "param_count": st.param_count(),
                "param_bytes": st.param_count() * itemsize,
                "flops_per_sample": {"forward": st.flops_fwd, "backward": st.flops_bwd},
                "input": st.input,
                "output": st.output,
                "boundary_in_bytes_per_sample": st.input_width * itemsize,
                "boundary_out_bytes_per_sample": st.output_width * itemsize,
            }
            for st in plan.stages
        ],
    }
    return out
