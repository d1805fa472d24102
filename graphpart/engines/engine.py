"""Engines run a Plan's stages through a schedule: in this process, or on Ray actors (runtime).

One training step = every micro-batch's forward and backward in the schedule's order, then
each stage's `finish` (regulariser gradient + optimizer step). The step logic is written once
over `_call`, which the in-process engine answers with values and the Ray engine with object
references, so both run exactly the same sequence of actions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from graphpart.plan import schedule as sch
from graphpart.errors import PlanError
from graphpart.optim import Optimizer
from graphpart.params import Params, stage_params
from graphpart.plan.partition import Plan, split_batch


def submission_order(actions: list[list[sch.Action]]) -> list[tuple[int, sch.Action]]:
    """(stage, action) pairs in an order that respects every dependency of the schedule.

    Each stage's own order is kept; across stages, actions are ordered by their start in a
    unit-time simulation, which is a topological order of the dependency graph.
    """
    tl = sch.simulate(actions, 1.0, 1.0)
    events = sorted(tl.events, key=lambda e: (e.start, e.stage))
    return [(e.stage, e.action) for e in events]


class Engine:
    """Common stepping logic; subclasses provide `_call`, `_get` and the stage handles."""

    plan: Plan
    kind: str
    microbatches: int

    def _setup_schedule(self, kind: str, microbatches: int) -> None:
        self.kind = kind
        self.microbatches = int(microbatches)
        self.actions = sch.make(kind, self.plan.k, self.microbatches)
        self.order = submission_order(self.actions)
        self.peak_in_flight = [sch.peak_in_flight(a) for a in self.actions]

    def reschedule(self, kind: str, microbatches: int) -> None:
        """Use another schedule or micro-batch count from the next step on (same workers).

        Workers hold buffers for micro-batches of up to their `max_rows` rows, so the new
        count must not make micro-batches larger than the engine was built for.
        """
        self._setup_schedule(kind, microbatches)

    def _call(self, k: int, method: str, *args: Any) -> Any:
        raise NotImplementedError

    def _get(self, handles: list[Any]) -> list[Any]:
        raise NotImplementedError

    def step(self, x: np.ndarray, y: np.ndarray, update: bool = True) -> dict[str, float]:
        """One minibatch through the pipeline; returns J, L and s (L, s summed over stages)."""
        n = len(x)
        rows = self._rows(n)
        scale = 1.0 / n
        last = self.plan.k - 1
        fwd: dict[tuple[int, int], Any] = {}
        bwd: dict[tuple[int, int], Any] = {}
        for k, a in self.order:
            m = a.mb
            if a.kind == "F":
                inp = self._feed(x[rows[m]]) if k == 0 else fwd.pop((k - 1, m))
                lab = y[rows[m]] if k == last else None
                fwd[(k, m)] = self._call(k, "forward", m, inp, lab, scale)
            else:
                g = None if k == last else bwd.pop((k + 1, m))
                bwd[(k, m)] = self._call(k, "backward", m, g, scale)
        done = [self._call(k, "finish", update) for k in range(self.plan.k)]
        # wait on the leaves too (last stage's forwards, first stage's backwards): a failure
        # there must surface here, not be dropped
        return self._totals(self._get([*fwd.values(), *bwd.values(), *done])[-self.plan.k :])

    def _rows(self, n: int) -> list[slice]:
        """Row ranges of this step's micro-batches in an n-row minibatch."""
        if self.microbatches > n:
            raise PlanError(f"microbatches={self.microbatches} exceeds the minibatch of {n} rows")
        return split_batch(n, self.microbatches)

    @staticmethod
    def _totals(finished: list[dict[str, float]]) -> dict[str, float]:
        """J, L and s of a step from every stage's `finish` result."""
        loss = sum(r["loss"] for r in finished)
        s = sum(r["s"] for r in finished)
        return {"J": loss + s, "L": loss, "s": s}

    def _feed(self, x: np.ndarray) -> Any:
        return x

    def value_and_grad(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """J and gradients of one minibatch, without updating (for checks against the oracle)."""
        r = self.step(x, y, update=False)
        grads: dict[str, np.ndarray] = {}
        for g in self._get([self._call(k, "get_grads") for k in range(self.plan.k)]):
            grads.update(g)
        self._get([self._call(k, "zero_grad") for k in range(self.plan.k)])
        return r["J"], grads

    def predict(self, x: np.ndarray, chunk: int) -> np.ndarray:
        """Logits for every row of x (inference forward, `chunk` rows at a time)."""
        chunk = max(1, min(chunk, self.chunk))  # workers hold buffers for `self.chunk` rows
        outs = []
        for start in range(0, len(x), chunk):
            h: Any = x[start : start + chunk]
            for k in range(self.plan.k):
                h = self._call(k, "infer", h)
            outs.append(h)
        return np.concatenate(self._get(outs)) if outs else np.zeros((0, 0))

    def get_params(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for p in self._get([self._call(k, "get_params") for k in range(self.plan.k)]):
            out.update(p)
        return out

    def get_state(self) -> list[dict]:
        return self._get([self._call(k, "get_state") for k in range(self.plan.k)])

    def set_state(self, states: list[Mapping]) -> None:
        self._get([self._call(k, "set_state", s) for k, s in enumerate(states)])

    def stats(self) -> list[dict]:
        return self._get([self._call(k, "stats") for k in range(self.plan.k)])

    def events(self) -> list[list]:
        return self._get([self._call(k, "events") for k in range(self.plan.k)])

    def close(self) -> None:
        pass

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def stage_kwargs(plan: Plan, k: int, max_rows: int, device: str, recompute: bool) -> dict:
    st = plan.stages[k]
    return dict(
        output=st.output,
        input_grad=k > 0,
        max_rows=max_rows,
        index=k,
        device=device,
        recompute=recompute,
    )


class LocalEngine(Engine):
    """All stages in this process, run one action at a time in the schedule's order."""

    def __init__(
        self,
        plan: Plan,
        params: Params,
        optimizer: Optimizer,
        *,
        microbatches: int = 1,
        schedule: str = "1f1b",
        max_rows: int,
        device: str = "cpu",
        recompute: bool = False,
        keep_events: bool = True,
    ) -> None:
        from workers.stage import StageWorker

        self.plan = plan
        self._setup_schedule(schedule, microbatches)
        rows = -(-max_rows // self.microbatches)
        self.workers = [
            StageWorker(
                st.graph,
                stage_params(st.graph, params),
                optimizer,
                keep_events=keep_events,
                **stage_kwargs(plan, st.index, max(rows, 1), device, recompute),
            )
            for st in plan.stages
        ]
        self.chunk = max(rows, 1)

    def _call(self, k: int, method: str, *args: Any) -> Any:
        out = getattr(self.workers[k], method)(*args)
        return out.copy() if isinstance(out, np.ndarray) else out

    def _get(self, handles: list[Any]) -> list[Any]:
        return handles

    def predict(self, x: np.ndarray, chunk: int | None = None) -> np.ndarray:
        return super().predict(x, chunk or self.chunk)
