"""What a run decides before it starts: data shape, graph, plan, optimizer, workload, engine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from graphpart.engines import DataParallel, Engine, Trainable, measured_costs, resolve_transport
from graphpart.errors import ConfigError, GraphpartError
from graphpart.ir import Graph, mlp
from graphpart.optim import Optimizer, make_optimizer
from graphpart.params import Params
from graphpart.plan.batching import microbatch_rows
from graphpart.plan.kinds import check_layers, chunks_for, is_virtual
from graphpart.plan.memory import (
    MemoryPrediction,
    Workload,
    budget_problem,
    predict_data_parallel,
    stage_memory_cost,
)
from graphpart.plan.partition import Plan, partition
from graphpart.plan.virtual_memory import predict_schedule
from graphpart.run.config import Config
from graphpart.run.data import reader_for
from graphpart.run.dataset import Dataset, DataShape, DataSpec
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
    workload: Workload
    _dataset: Dataset | None = dataclasses.field(default=None, repr=False)
    notes: tuple[str, ...] = ()  # what setup changed of the config, one line each, for the user

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = load_dataset(self.config)
        return self._dataset


def data_spec(cfg: Config) -> DataSpec:
    """What reading the data of `cfg` takes (data.n_classes = 0: synthetic data's 10, a
    file's classes from its labels)."""
    d, t = cfg.data, cfg.train
    task = "regression" if cfg.model.loss == "mse" else "classification"
    classes = d.n_classes or None
    if task == "regression" and d.source != "synthetic":  # a file's targets: its columns
        classes = None
    return DataSpec(
        d.source,
        dtype=t.dtype,
        task=task,
        n_classes=classes,
        test_fraction=d.test_fraction,
        seed=t.seed,
        n_samples=d.n_samples,
        n_features=d.n_features,
    )


def load_dataset(cfg: Config) -> Dataset:
    """The data `cfg` trains on, loaded."""
    spec = data_spec(cfg)
    return reader_for(spec.source).load(spec)


def data_shape(cfg: Config) -> DataShape:
    """The shape of the data `cfg` trains on, read without loading it."""
    spec = data_spec(cfg)
    return reader_for(spec.source).shape(spec)


def workload_of(cfg: Config) -> Workload:
    """The seven settings of a training step the memory model and the search read."""
    p, t = cfg.pipeline, cfg.train
    return Workload(
        batch=t.batch_size,
        microbatches=p.microbatches,
        schedule=p.schedule,
        optimizer=t.optimizer,
        momentum=t.momentum,
        dtype=t.dtype,
        recompute=p.recompute,
        chunks=p.chunks,
    )


def stage_count(cfg: Config, layers: int) -> int:
    """The stages the plan cuts: pipeline.stages, times the chunks a device under a schedule
    of virtual stages (checked against the model's `layers`)."""
    p = cfg.pipeline
    if not is_virtual(p.schedule):
        return p.stages
    check_layers(p.schedule, p.stages, p.chunks, layers)
    return p.stages * chunks_for(p.schedule, p.chunks)


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
    p, w = cfg.pipeline, workload_of(cfg)
    try:
        stages = stage_count(cfg, len(graph.layers))
    except GraphpartError as e:
        raise ConfigError(f"pipeline.{e}") from None
    if p.strategy == "memory":
        cost = stage_memory_cost(graph, p.stages, w)
        plan = partition(graph, p.stages, "memory", memory_cost=cost)
    elif p.cost == "measured" and p.strategy == "balanced" and stages > 1:
        times = measured_costs(graph, microbatch_rows(w.batch, w.microbatches), w.dtype)
        plan = dataclasses.replace(
            partition(graph, stages, "balanced", layer_costs=times),
            strategy="balanced (measured layer times)",
        )
    else:
        plan = partition(graph, stages, p.strategy)
    t = cfg.train
    opt = make_optimizer(
        t.optimizer, lr=t.lr, momentum=t.momentum, beta1=t.beta1, beta2=t.beta2, eps=t.eps
    )
    return Setup(cfg, ds, graph, plan, opt, w, notes=notes)


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


def predicted_memory(s: Setup) -> MemoryPrediction:
    """Peak bytes per device and category of the run `s.config` describes (no workers)."""
    dp = s.config.pipeline.data_parallel
    if dp > 1:
        return predict_data_parallel(s.plan, dp, s.workload, channels=uses_channels(s.config))
    return predict_schedule(s.plan, s.workload, channels=uses_channels(s.config))


def transport_of(cfg: Config) -> str:
    """The transport a run uses (`auto` resolved)."""
    p = cfg.pipeline
    return resolve_transport(p.transport, max(p.stages, p.data_parallel), p.address)


def uses_ray(cfg: Config) -> bool:
    return transport_of(cfg) != "inprocess"


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


def check_last_batch(s: Setup) -> None:
    """Data parallelism needs a row per replica in every minibatch, the epoch's last included.

    (Micro-batches need no such rule: a pipeline's minibatch, or a replica's share of one,
    with fewer rows than micro-batches runs one micro-batch per row, the same mathematics.)"""
    p, t = s.config.pipeline, s.config.train
    last = s.shape.n_train % t.batch_size
    if p.data_parallel > 1 and 0 < last < p.data_parallel:
        raise ConfigError(
            f"pipeline.data_parallel={p.data_parallel}: the last minibatch of each epoch has "
            f"{last} row(s) ({s.shape.n_train} training rows, train.batch_size="
            f"{t.batch_size}), fewer than the replicas; choose a batch size that leaves 0 or at "
            f"least {p.data_parallel} rows"
        )


def make_engine(s: Setup, params: Params, keep_events: bool = False) -> Trainable:
    """The engine `s.config` asks for. `keep_events`: keep every worker's timeline of
    allocations and actions (the profiler's plots; it grows with every step, so training
    runs leave it off)."""
    p, t = s.config.pipeline, s.config.train
    if p.data_parallel > 1:
        # replicated pipelines run the schedule and recomputation; one-stage replicas run
        # 1F1B (F0 B0 F1 B1 ...) without recomputation, which predict_data_parallel models
        grid = p.stages > 1
        return DataParallel(
            s.plan,
            params,
            s.optimizer,
            replicas=p.data_parallel,
            microbatches=p.microbatches,
            schedule=p.schedule if grid else "1f1b",
            recompute=p.recompute and grid,
            transport=transport_of(s.config),
            address=p.address,
            max_rows=t.batch_size,
            device=p.device,
            keep_events=keep_events,
            step_timeout=p.step_timeout,
            overlap=p.allreduce_overlap,
            placement=p.placement,
        )
    return Engine(
        s.plan,
        params,
        s.optimizer,
        transport=transport_of(s.config),
        address=p.address,
        microbatches=p.microbatches,
        schedule=p.schedule,
        chunks=p.chunks,
        max_rows=t.batch_size,
        device=p.device,
        recompute=p.recompute,
        keep_events=keep_events,
        step_timeout=p.step_timeout,
    )
