"""The training driver: config -> data, graph, plan, engine -> epochs of steps -> run directory."""

from __future__ import annotations

import dataclasses
import json
import math
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
    StageStats,
    measured_costs,
    resolve_transport,
)
from graphpart.errors import ConfigError
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
from graphpart.run.checkpoint import RunDir, load_checkpoint, save_checkpoint
from graphpart.run.config import Config, dump_toml
from graphpart.units import parse_bytes


@dataclass
class Setup:
    config: Config
    dataset: gdata.Dataset
    graph: Graph
    plan: Plan
    optimizer: Optimizer


def load_dataset(cfg: Config) -> gdata.Dataset:
    d, t = cfg.data, cfg.train
    task = "regression" if cfg.model.loss == "mse" else "classification"
    kw: dict[str, Any] = dict(dtype=t.dtype, test_fraction=d.test_fraction, seed=t.seed)
    if d.source == "synthetic":
        kw.update(n_samples=d.n_samples, n_features=d.n_features, n_classes=d.n_classes, task=task)
    elif d.source.endswith(".npz"):
        kw.update(task=task)
    return gdata.load(d.source, **kw)


def setup(cfg: Config) -> Setup:
    """Everything decided before a run starts (pure: no Ray, no training)."""
    ds = load_dataset(cfg)
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
    return Setup(cfg, ds, graph, plan, opt)


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
        )
    return predict(s.plan, **memory_kwargs(cfg))


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


def make_engine(s: Setup, params: Params, keep_events: bool = True) -> Engine | DataParallel:
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


def train(
    cfg: Config,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    resume: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train as `cfg` says; write the run directory; return the summary.

    `on_epoch` gets each epoch's metrics (the metrics.jsonl row plus `train_s`, the training
    seconds so far) as soon as the epoch ends.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    s = setup(cfg)
    check_budget(s)
    t, p = cfg.train, cfg.pipeline
    run = RunDir.open_existing(resume) if resume else RunDir.create(cfg.run.dir, cfg.run.name)
    start_epoch, step = 0, 0
    params = Init(t.seed, t.dtype)  # each worker makes its own stage's parameters
    if resume:  # ... which set_state then overwrites with the checkpoint's
        ck = load_checkpoint(run.checkpoint_path, s.graph)
        start_epoch, step = ck["epoch"], ck["steps"]
    else:
        run.write_text("config.toml", dump_toml(cfg))
        run.write_text("plan.json", json.dumps(plan_dict(s.plan, cfg), indent=2))
    ds = s.dataset
    n = len(ds.X_train)
    wall0 = time.perf_counter()
    train_time = 0.0
    samples = 0
    epoch_metrics: dict[str, Any] = {}
    with make_engine(s, params) as engine:
        startup = time.perf_counter() - wall0  # Ray, workers, kernel compile or cache load
        if resume:
            engine.set_state(ck["stages"](s.plan))
        bar = _progress(progress, (t.epochs - start_epoch) * _steps_per_epoch(n, t.batch_size))
        try:
            for epoch in range(start_epoch, t.epochs):
                t0 = time.perf_counter()
                total, count = 0.0, 0
                for idx in gdata.batches(n, t.batch_size, t.seed, epoch):
                    r = engine.step(ds.X_train[idx], ds.y_train[idx])
                    if not math.isfinite(r.J):
                        raise FloatingPointError(
                            f"objective J became {r.J} at step {step + 1} (epoch {epoch + 1}); "
                            f"lower train.lr (now {t.lr})"
                        )
                    step += 1
                    samples += len(idx)
                    total += r.J * len(idx)
                    count += len(idx)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{r.J:.4f}", refresh=False)
                    if t.log_every and step % t.log_every == 0:
                        run.append_metrics(
                            {
                                "step": step,
                                "epoch": epoch + 1,
                                "loss": r.J,
                                "L": r.L,
                                "s": r.s,
                            }
                        )
                train_time += time.perf_counter() - t0
                epoch_metrics = {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_loss": total / count,
                    **evaluate(engine, ds, ds.X_test, ds.y_test, cfg.model.loss),
                    "epoch_s": time.perf_counter() - t0,
                }
                run.append_metrics(epoch_metrics)
                if on_epoch is not None:
                    on_epoch({**epoch_metrics, "train_s": train_time})
                save_checkpoint(
                    run.checkpoint_path, engine.get_state(), s.plan, epoch=epoch + 1, steps=step
                )
                msg = (
                    f"epoch {epoch + 1:3d}/{t.epochs}  loss {epoch_metrics['train_loss']:.4f}"
                    f"  test loss {epoch_metrics['test_loss']:.4f}"
                )
                if "test_accuracy" in epoch_metrics:
                    msg += f"  test acc {epoch_metrics['test_accuracy']:.4f}"
                (bar.write if bar is not None else log)(msg)
        finally:
            if bar is not None:
                bar.close()
        final = engine.get_params()
        stats = engine.stats()
    run.save_params(final)
    wall = time.perf_counter() - wall0
    summary = {
        "run_dir": str(run.path),
        "final_loss": epoch_metrics.get("train_loss"),
        "test_loss": epoch_metrics.get("test_loss"),
        "test_accuracy": epoch_metrics.get("test_accuracy"),
        "epochs": t.epochs,
        "steps": step,
        "wall_s": wall,
        "train_s": train_time,
        "startup_s": startup,
        "samples_per_s": samples / train_time if train_time > 0 else None,
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
        "peak_bytes": st.memory.peak_total,
        "peak_by_category": dict(st.memory.peak),
    }


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
