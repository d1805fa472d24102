"""Data parallelism: K replicas of the whole model on Ray actors, gradients all-reduced each step.

Each replica holds every parameter and its optimizer state and takes ceil(B/K) rows of each
minibatch (graphpart.plan.batching.split_batch, the same rows a one-stage Engine with K
micro-batches gives its micro-batches), which it runs as M micro-batches (`microbatches`,
split_batch of its share: gradient accumulation inside the replica; a share of fewer rows
than M, from an epoch's short last batch, runs one micro-batch per row, as Engine does with a
minibatch of fewer rows than its micro-batches). Its losses are scaled by 1/B of the whole
minibatch, so the replicas' gradients sum to the minibatch gradient; a ring all-reduce over the
project's own channels (workers/ring.py; graphpart/engines/transports/ring.py) sums them in
place, leaving every replica with bit-identical gradients, and each replica then adds the
regulariser's gradient and takes the same optimizer step, so the replicas stay identical
without ever exchanging parameters. Results equal a one-stage pipeline with K x M
micro-batches, and the oracle, up to the order of the floating-point sums.

Like graphpart.engines.Engine it satisfies graphpart.engines.Trainable (step,
value_and_grad, predict, state, stats, events, close), so the training loop, checkpoints and
reports take either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from graphpart.engines import inference, state
from graphpart.engines.engine import StepResult
from graphpart.engines.inference import batch_widths
from graphpart.engines.transports.ring import Ring
from graphpart.errors import ConfigError, PlanError
from graphpart.optim import Optimizer
from graphpart.params import Params, params_dtype, stage_params
from graphpart.plan.batching import microbatch_rows, split_batch
from graphpart.plan.stages import Plan
from workers.stage import WorkerSpec
from workers.stats import StageStats

# what carries the all-reduce: "shm" channels between replicas on one node (Ray between
# nodes), or "push": always Ray; "auto" is "shm"
DP_TRANSPORTS = ("auto", "shm", "push")


class DataParallel:
    """K replicas of a one-stage plan, each on its share of every minibatch's rows."""

    kind = "data-parallel"

    def __init__(
        self,
        plan: Plan,
        params: Params,
        optimizer: Optimizer,
        *,
        replicas: int,
        microbatches: int = 1,
        transport: str = "shm",
        max_rows: int,
        device: str = "cpu",
        keep_events: bool = False,
        address: str = "",
        num_cpus: int | None = None,
        step_timeout: float = 0.0,
    ) -> None:
        if plan.k != 1:
            raise ConfigError(
                f"data parallelism replicates the whole model, but the plan has {plan.k} "
                "stages; use a one-stage plan (stages = 1)"
            )
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ConfigError(f"replicas={replicas!r}: must be a positive integer")
        _check_microbatches(microbatches)
        if transport not in DP_TRANSPORTS:
            raise ConfigError(
                f"transport={transport!r} for data parallelism; valid: {', '.join(DP_TRANSPORTS)}"
            )
        self.plan = plan
        self.replicas = replicas
        self._microbatches = microbatches
        self.max_rows = max(int(max_rows), 1)
        self.share = microbatch_rows(self.max_rows, replicas)  # rows of a replica's share
        self.chunk = microbatch_rows(self.share, microbatches)  # rows a replica's buffers hold
        self.itemsize = params_dtype(params).itemsize
        st = plan.stages[0]
        own = stage_params(st.graph, params)  # the same values (or Init) for every replica
        specs = [
            WorkerSpec(
                st.graph,
                own,
                optimizer,
                output=st.output,
                input_grad=False,
                max_rows=self.chunk,
                index=r,
                device=device,
                keep_events=keep_events,
                trace_allocations=keep_events,  # profiling, in the replicas
                batch_rows=self.share,
            )
            for r in range(self.replicas)
        ]
        self.transport = Ring(
            address=address,
            num_cpus=num_cpus,
            step_timeout_s=float(step_timeout),
            channels=transport != "push",
        )
        try:
            self.transport.start(specs)
        except BaseException:
            self.transport.close()
            raise

    def reschedule(self, microbatches: int) -> None:
        """Run each replica's share as `microbatches` micro-batches from the next step on (the
        same replicas). Their buffers hold `chunk` rows, so the new count must not make a
        micro-batch larger than that: any count at least the one the engine was built with."""
        _check_microbatches(microbatches)
        rows = microbatch_rows(self.share, microbatches)
        if rows > self.chunk:
            raise PlanError(
                f"microbatches={microbatches}: a replica's micro-batches would hold up to {rows} "
                f"rows, more than the {self.chunk} its buffers were built for; use at least "
                f"{microbatch_rows(self.share, self.chunk)}"
            )
        self._microbatches = microbatches

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
            [[np.ascontiguousarray(x[m]) for m in mbs] for mbs in rows],
            [[y[m] for m in mbs] for mbs in rows],
            1.0 / n,
            bool(update),
        )
        loss = sum(f.loss for f in finished)
        s = finished[0].s  # every replica holds the same weights, so the same s
        return StepResult(loss + s, loss, s, tuple(finished))

    def value_and_grad(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """J and the (all-reduced) gradients of one minibatch, without updating."""
        r = self.step(x, y, update=False)
        grads = self._get([self.transport.call(0, "get_grads")])[0]
        self._all("zero_grad")
        return r.J, grads

    def predict(self, x: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """Logits for every row of x: chunks of at most `chunk` rows (and at most what stays
        inside a Ray call: engines/inference.py) dealt to the replicas in turn."""
        rows = max(1, min(chunk or self.chunk, self.chunk))  # a replica's buffers hold `chunk`
        rows = min(rows, inference.inline_rows(batch_widths(self.plan.graph), self.itemsize))
        chains = [[r] for r in range(self.replicas)]
        return inference.predict(self.transport, x, rows, chains, self.replicas + 1)

    # -- state ----------------------------------------------------------------------------------
    def _get(self, handles: Sequence[Any]) -> list[Any]:
        return self.transport.get(handles)

    def _all(self, method: str, *args: Any) -> list[Any]:
        return self._get([self.transport.call(r, method, *args) for r in range(self.replicas)])

    def get_params(self) -> dict[str, np.ndarray]:
        return state.gather_params(self.transport, [0])

    def get_state(self, live: bool = False) -> list[dict]:
        """[replica 0's state]: one stage's, so it loads into a one-stage Engine and back
        (`live` as Engine's; replicas are never in this process)."""
        return state.gather(self.transport, [0], live=live)

    def set_state(self, states: Sequence[Mapping]) -> None:
        """Every replica gets the state; several stages' states (from a pipeline) are merged."""
        one = _merge(states)
        state.scatter(self.transport, dict.fromkeys(range(self.replicas), one))

    def stats(self) -> list[StageStats]:
        """One StageStats per replica (`stage` is the replica's index)."""
        return self._all("stats")

    def events(self) -> list[list]:
        return self._all("events")

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_microbatches(m: Any) -> None:
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"microbatches={m!r}: must be a positive integer (per replica)")


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
