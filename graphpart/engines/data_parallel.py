"""Data parallelism: R replicas of the whole model (or of a K-stage pipeline: R x K workers) on
Ray actors, gradients all-reduced each step.

Each replica holds every parameter and its optimizer state (in a pipeline: each of its K
stages holds its own stage's) and takes ceil(B/R) rows of each minibatch
(graphpart.plan.batching.split_batch, the same rows a one-stage Engine with R micro-batches
gives its micro-batches), which it runs as M micro-batches (`microbatches`, split_batch of its
share: gradient accumulation inside the replica; a share of fewer rows than M, from an epoch's
short last batch, runs one micro-batch per row, as Engine does with a minibatch of fewer rows
than its micro-batches) through its pipeline's `schedule` (one of graphpart.plan.schedule's
KINDS), exactly as Engine runs one pipeline. Its losses are scaled by 1/B of the whole
minibatch, so the replicas' gradients sum to the minibatch gradient; a ring all-reduce per
stage index (stage k of every replica) over the project's own channels (workers/ring.py;
graphpart/engines/transports/ring.py) sums them in place, leaving every replica with
bit-identical gradients, and each worker then adds the regulariser's gradient and takes the
same optimizer step, so the replicas stay identical without ever exchanging parameters.
Results equal a one-stage pipeline with R x M micro-batches, and the oracle, up to the order
of the floating-point sums.

The all-reduce runs in buckets of `bucket_bytes` (workers/buckets.py, reverse layer order) and,
with `overlap` (the default), each bucket starts as soon as its gradients are final and
advances between the kernel calls of the backward of the earlier layers, on the worker's own
thread; overlap=False (or `set_overlap(False)`) reduces the same buckets after the backward:
bit-identical results.
Each worker's Busy reports the all-reduce's own time and the part of it the step waited for
(`allreduce`, `exposed`).

Like graphpart.engines.Engine it satisfies graphpart.engines.Trainable (step,
value_and_grad, predict, state, stats, events, close), so the training loop, checkpoints and
reports take either; its state is replica 0's, one state per stage, as Engine's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from graphpart.engines import inference, state
from graphpart.engines.engine import StepResult
from graphpart.engines.inference import batch_widths
from graphpart.engines.transports import removed_note
from graphpart.engines.transports.ring import Ring
from graphpart.engines.wiring import StepWiring, wire
from graphpart.engines.workers import Workers
from graphpart.errors import ConfigError, PlanError
from graphpart.optim import Optimizer
from graphpart.params import Params, params_dtype, stage_params
from graphpart.plan.batching import microbatch_rows, split_batch
from graphpart.plan.kinds import is_virtual
from graphpart.plan.schedule import KINDS
from graphpart.plan.stages import Plan
from workers.buckets import DEFAULT_BUCKET_BYTES
from workers.stage import WorkerSpec

# what carries the all-reduce (and a replicated pipeline's boundary tensors): "shm" channels
# between workers on one node (Ray between nodes), or "push": always Ray; "auto" is "shm"
DP_TRANSPORTS = ("auto", "shm", "push")


class DataParallel(Workers):
    """R replicas of a plan (of one or more stages), each on its share of every minibatch."""

    kind = "data-parallel"

    def __init__(
        self,
        plan: Plan,
        params: Params,
        optimizer: Optimizer,
        *,
        replicas: int,
        microbatches: int = 1,
        schedule: str = "1f1b",
        transport: str = "shm",
        max_rows: int,
        device: str = "cpu",
        recompute: bool = False,
        keep_events: bool = False,
        address: str = "",
        num_cpus: int | None = None,
        step_timeout: float = 0.0,
        overlap: bool = True,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        placement: str = "pipeline",
    ) -> None:
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ConfigError(f"replicas={replicas!r}: must be a positive integer")
        _check_microbatches(microbatches)
        _check_schedule(schedule)
        if transport not in DP_TRANSPORTS:
            raise ConfigError(
                f"transport={transport!r} for data parallelism; valid: "
                f"{', '.join(DP_TRANSPORTS)}{removed_note(transport)}"
            )
        self.plan = plan
        self.replicas = replicas
        self._microbatches = microbatches
        self.schedule = schedule
        self._wirings: dict[int, StepWiring] = {}
        self.max_rows = max(int(max_rows), 1)
        self.share = microbatch_rows(self.max_rows, replicas)  # rows of a replica's share
        self.chunk = microbatch_rows(self.share, microbatches)  # rows a worker's buffers hold
        self.itemsize = params_dtype(params).itemsize
        k = plan.k
        specs = [
            WorkerSpec(
                st.graph,
                stage_params(st.graph, params),  # the same values (or Init) for every replica
                optimizer,
                output=st.output,
                input_grad=st.index > 0,
                max_rows=self.chunk,
                index=r * k + st.index,  # the worker's place: replica-major
                device=device,
                recompute=recompute,
                keep_events=keep_events,
                trace_allocations=keep_events,  # profiling, in the workers
                batch_rows=self.share,
                bucket_bytes=int(bucket_bytes),
                replicated=self.replicas > 1,
            )
            for r in range(self.replicas)
            for st in plan.stages
        ]
        self.transport = Ring(
            address=address,
            num_cpus=num_cpus,
            step_timeout_s=float(step_timeout),
            channels=transport != "push",
            stages=k,
            overlap=overlap,
            placement=placement,
        )
        try:
            self.transport.start(specs)
        except BaseException:
            self.transport.close()
            raise

    def reschedule(self, microbatches: int, schedule: str | None = None) -> None:
        """Run each replica's share as `microbatches` micro-batches (through `schedule`, if
        given) from the next step on (the same workers). Their buffers hold `chunk` rows, so
        the new count must not make a micro-batch larger than that: any count at least the
        one the engine was built with."""
        _check_microbatches(microbatches)
        if schedule is not None:
            _check_schedule(schedule)
        rows = microbatch_rows(self.share, microbatches)
        if rows > self.chunk:
            raise PlanError(
                f"microbatches={microbatches}: a replica's micro-batches would hold up to {rows} "
                f"rows, more than the {self.chunk} its buffers were built for; use at least "
                f"{microbatch_rows(self.share, self.chunk)}"
            )
        self._microbatches = microbatches
        if schedule is not None and schedule != self.schedule:
            self.schedule, self._wirings = schedule, {}

    @property
    def overlap(self) -> bool:
        """Whether each worker all-reduces its gradient buckets while its backward still runs
        (else after it: the same buckets, the same sums in the same order)."""
        return self.transport.overlap

    def set_overlap(self, overlap: bool) -> None:
        """Turn the overlap on or off from the next step (the same workers: to compare)."""
        self.transport.set_overlap(overlap)

    @property
    def microbatches(self) -> int:
        """Micro-batches per replica (a step's gradient accumulation inside each replica)."""
        return self._microbatches

    # -- stepping -------------------------------------------------------------------------------
    def step(self, x: np.ndarray, y: np.ndarray, update: bool = True) -> StepResult:
        """One minibatch over the replicas; J, L (summed over replicas) and s (every replica's)."""
        n, k = len(x), self.replicas
        if n < k:
            raise PlanError(
                f"a minibatch of {n} rows cannot feed {k} data-parallel replicas (each needs at "
                f"least one row); use at least {k} rows or fewer replicas"
            )
        if n > self.max_rows:
            raise PlanError(
                f"a minibatch of {n} rows exceeds max_rows={self.max_rows} the replicas were "
                "built for"
            )
        rows = replica_rows(n, k, self.microbatches)
        finished = self.transport.run_replicas(
            [self._wiring(len(mbs)) for mbs in rows],
            [[np.ascontiguousarray(x[m]) for m in mbs] for mbs in rows],
            [[y[m] for m in mbs] for mbs in rows],
            1.0 / n,
            bool(update),
        )
        loss = sum(f.loss for f in finished)
        s = sum(f.s for f in finished[: self.plan.k])  # every replica holds the same weights
        return StepResult(loss + s, loss, s, tuple(finished))

    def _wiring(self, microbatches: int) -> StepWiring:
        """A replica's pipeline wiring for a share of `microbatches` micro-batches (made once
        per count: a short share runs fewer)."""
        if microbatches not in self._wirings:
            self._wirings[microbatches] = wire(self.schedule, self.plan.k, microbatches)
        return self._wirings[microbatches]

    def value_and_grad(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """J and the (all-reduced) gradients of one minibatch, without updating."""
        r = self.step(x, y, update=False)
        grads: dict[str, np.ndarray] = {}
        for g in self.transport.get(
            [self.transport.call(k, "get_grads") for k in range(self.plan.k)]
        ):
            grads.update(g)  # replica 0's stages
        self._all("zero_grad")
        return r.J, grads

    def predict(self, x: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """Logits for every row of x: chunks of at most `chunk` rows (and at most what stays
        inside a Ray call: engines/inference.py) dealt to the replicas in turn."""
        rows = max(1, min(chunk or self.chunk, self.chunk))  # a replica's buffers hold `chunk`
        rows = min(rows, inference.inline_rows(batch_widths(self.plan.graph), self.itemsize))
        k = self.plan.k
        chains = [[r * k + st for st in range(k)] for r in range(self.replicas)]
        return inference.predict(self.transport, x, rows, chains, self.replicas * k + 1)

    # -- state ----------------------------------------------------------------------------------
    @property
    def n_workers(self) -> int:
        """Replica-major: stage k of replica r is worker r * K + k."""
        return self.replicas * self.plan.k

    def get_params(self) -> dict[str, np.ndarray]:
        """Replica 0's parameters, every stage's, by name."""
        return state.gather_params(self.transport, range(self.plan.k))

    def get_state(self, live: bool = False) -> list[dict]:
        """Replica 0's state, one per stage: it loads into an Engine of the same plan and back
        (`live` as Engine's; replicas are never in this process)."""
        return state.gather(self.transport, range(self.plan.k), live=live)

    def set_state(self, states: Sequence[Mapping]) -> None:
        """Every replica gets the state: one per stage of the plan, or any other number of
        stages' states (a checkpoint of another pipeline), merged and split by parameter."""
        k = self.plan.k
        per_stage = list(states) if len(states) == k else _split(_merge(states), self.plan)
        state.scatter(
            self.transport,
            {r * k + st: per_stage[st] for r in range(self.replicas) for st in range(k)},
        )


def _check_microbatches(m: Any) -> None:
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"microbatches={m!r}: must be a positive integer (per replica)")


def _check_schedule(schedule: Any) -> None:
    if schedule not in KINDS:
        why = " (virtual stages do not run data parallel yet)" if is_virtual(schedule) else ""
        raise ConfigError(f"schedule={schedule!r}{why}; valid: {', '.join(KINDS)}")


def replica_rows(n: int, replicas: int, microbatches: int) -> list[list[slice]]:
    """The row ranges of an n-row minibatch's micro-batches, per replica: replica r takes
    split_batch(n, replicas)[r] and cuts it into split_batch(its rows, M) micro-batches,
    M = min(microbatches, its rows) (a share smaller than `microbatches`, from a short last
    batch, runs one micro-batch per row, as Engine does)."""
    out = []
    for share in split_batch(n, replicas):
        size = share.stop - share.start
        parts = split_batch(size, min(int(microbatches), size))
        out.append([slice(share.start + p.start, share.start + p.stop) for p in parts])
    return out


def _split(one: Mapping, plan: Plan) -> list[Mapping]:
    """One state (parameters and optimizer state by name) cut into the plan's stages'."""
    out = []
    for st in plan.stages:
        names = {v.name for v in st.graph.params}
        out.append(
            {
                "params": {n: v for n, v in one["params"].items() if n in names},
                "opt": {n: v for n, v in one.get("opt", {}).items() if n in names},
                "steps": int(one.get("steps", 0)),
            }
        )
    return out


def _merge(states: Sequence[Mapping]) -> Mapping:
    """One state from per-stage states (parameters and optimizer state by name)."""
    if not states:
        raise ConfigError("set_state needs at least one state")
    if len(states) == 1:
        return states[0]
    params: dict[str, Any] = {}
    opt: dict[str, Any] = {}
    for st in states:
        params.update(st["params"])
        opt.update(st.get("opt", {}))
    return {"params": params, "opt": opt, "steps": int(states[0].get("steps", 0))}
