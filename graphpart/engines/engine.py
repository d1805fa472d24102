"""The engine: runs a Plan's stages through a schedule over a transport.

One training step = every micro-batch's forward and backward as the wiring says (which stage
runs which action, fed from where), then each stage's `finish` (regulariser gradient and
optimizer step). The engine decides the step; the transport only moves calls and tensors
(in process, stage-to-stage pushes through Ray, shared-memory channels), so every transport runs the
same actions in the same per-stage order and gives bit-identical results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from graphpart.engines import state
from graphpart.engines.transport import Transport
from graphpart.engines.transports import RAY_DEFAULT, TRANSPORTS, removed_note
from graphpart.engines.wiring import StepFeed, StepWiring, wire, wire_inference
from graphpart.engines.workers import Workers
from graphpart.errors import ConfigError, PlanError
from graphpart.optim import Optimizer
from graphpart.params import Params, stage_params
from graphpart.plan.batching import microbatch_rows, split_batch
from graphpart.plan.kinds import chunks_for, is_virtual
from graphpart.plan.kinds import make as make_schedule
from graphpart.plan.schedule import Action
from graphpart.plan.stages import Plan
from workers.stage import WorkerSpec
from workers.stats import Finish

TRANSPORT_CHOICES = ("auto", *TRANSPORTS)


@dataclass(frozen=True)
class StepResult:
    """One step's objective J = L + s, data loss L and regulariser s (summed over stages)."""

    J: float
    L: float
    s: float
    stages: tuple[Finish, ...] = ()  # each stage's (or replica's) own loss and s

    @classmethod
    def total(cls, finished: Sequence[Finish]) -> StepResult:
        loss = sum(r.loss for r in finished)
        s = sum(r.s for r in finished)
        return cls(loss + s, loss, s, tuple(finished))


def resolve_transport(name: str, stages: int, address: str = "") -> str:
    """`auto`: in process for one stage on this machine, the default Ray transport otherwise."""
    if name == "auto":
        return "inprocess" if stages == 1 and not address else RAY_DEFAULT
    if name not in TRANSPORTS:
        raise ConfigError(
            f"transport={name!r}; valid: {', '.join(TRANSPORT_CHOICES)}{removed_note(name)}"
        )
    if name == "inprocess" and address:
        raise ConfigError(
            f"pipeline.address={address!r} needs a Ray transport; use one of "
            f"{', '.join(t for t in TRANSPORTS if t != 'inprocess')} (or auto)"
        )
    return name


def virtual_transports() -> tuple[str, ...]:
    """The transports that run schedules with virtual stages (several a worker)."""
    return tuple(n for n, t in TRANSPORTS.items() if getattr(t, "virtual_stages", False))


def check_virtual(schedule: str, transport: str) -> None:
    """A one-line ConfigError when `transport` cannot run `schedule`'s virtual stages."""
    if is_virtual(schedule) and transport not in virtual_transports():
        raise ConfigError(
            f"transport={transport!r} does not run schedule {schedule!r} (virtual stages, "
            f"several a worker); use one of {', '.join(virtual_transports())}"
        )


class Engine(Workers):
    """One worker per stage behind a transport; steps, inference and state over all stages.

    With a schedule of virtual stages (interleaved, zbv) the plan's stages are the virtual
    ones, V = devices x `chunks`, and a device's worker holds its `chunks` of them; steps,
    state, stats and inference still address the V stages (stage s on device `owner[s]`).
    """

    def __init__(
        self,
        plan: Plan,
        params: Params,
        optimizer: Optimizer,
        *,
        transport: str = "inprocess",
        microbatches: int = 1,
        schedule: str = "1f1b",
        chunks: int = 0,
        max_rows: int,
        device: str = "cpu",
        recompute: bool = False,
        keep_events: bool = False,
        address: str = "",
        num_cpus: int | None = None,
        step_timeout: float = 0.0,
    ) -> None:
        self.plan = plan
        self.chunks = chunks_for(schedule, chunks)
        if plan.k % self.chunks:
            raise PlanError(
                f"a plan of {plan.k} stages does not make devices of {self.chunks} chunks; "
                f"cut it into a multiple of {self.chunks} stages"
            )
        self.devices = plan.k // self.chunks
        self.placement = make_schedule(schedule, self.devices, self.chunks, 1)[0]
        self.reschedule(schedule, microbatches)
        self.chunk = microbatch_rows(max_rows, self.microbatches)  # rows a worker buffer holds
        self.max_rows = max(int(max_rows), 1)
        self._inference: dict[int, StepWiring] = {}
        name = resolve_transport(transport, self.devices, address)
        check_virtual(schedule, name)
        trace = keep_events and not TRANSPORTS[name].in_process  # profiling, in the workers
        specs = [
            WorkerSpec(
                st.graph,
                stage_params(st.graph, params),
                optimizer,
                output=st.output,
                input_grad=st.index > 0,
                max_rows=self.chunk,
                index=st.index,
                device=device,
                recompute=recompute,
                keep_events=keep_events,
                batch_rows=max(int(max_rows), 1),
                trace_allocations=trace,
            )
            for st in plan.stages
        ]
        self.transport: Transport = TRANSPORTS[name](
            address=address, num_cpus=num_cpus, step_timeout_s=float(step_timeout)
        )
        try:
            if is_virtual(schedule):  # a worker a device, holding its chunks (1 or more)
                self.transport.start(specs, self.placement.owner)  # type: ignore[call-arg]
            else:
                self.transport.start(specs)
        except BaseException:
            self.transport.close()
            raise

    # -- the schedule ---------------------------------------------------------------------------
    def reschedule(self, kind: str, microbatches: int) -> None:
        """Use another schedule or micro-batch count from the next step on (same workers).

        Workers hold buffers for micro-batches of up to `chunk` rows, so the new count must
        not make micro-batches larger than the engine was built for, nor place the stages on
        the devices otherwise (a virtual schedule's placement is the workers').
        """
        wiring = wire(kind, self.devices, int(microbatches), self.chunks)
        placed = make_schedule(kind, self.devices, self.chunks, 1)[0]
        if placed != self.placement:
            raise PlanError(
                f"schedule {kind!r} places the stages as {placed.name!r}, the workers hold "
                f"them as {self.placement.name!r}; start another engine to change it"
            )
        self.wiring: StepWiring = wiring
        self._short_wirings: dict[int, StepWiring] = {}

    @property
    def kind(self) -> str:
        return self.wiring.schedule

    @property
    def microbatches(self) -> int:
        return self.wiring.microbatches

    @property
    def actions(self) -> list[list[Action]]:
        return [list(a) for a in self.wiring.actions]

    @property
    def peak_in_flight(self) -> list[int]:
        return list(self.wiring.peak_in_flight)

    # -- stepping -------------------------------------------------------------------------------
    def step(self, x: np.ndarray, y: np.ndarray, update: bool = True) -> StepResult:
        """One minibatch through the pipeline; J, L and s (L and s summed over stages)."""
        n = len(x)
        if n < 1:
            raise PlanError("a minibatch of 0 rows; give at least one row")
        wiring = self.wiring if n >= self.microbatches else self._short(n)
        rows = split_batch(n, wiring.microbatches)
        feed = StepFeed(
            xs=[np.ascontiguousarray(x[r]) for r in rows],
            ys=[y[r] for r in rows],
            scale=1.0 / n,
            update=bool(update),
        )
        return StepResult.total(self.transport.run_step(wiring, feed))

    def _short(self, n: int) -> StepWiring:
        """The wiring for a minibatch of fewer rows than micro-batches (an epoch's short last
        batch): one micro-batch per row, same schedule; the sums are the same mathematics."""
        if n not in self._short_wirings:
            self._short_wirings[n] = wire(self.wiring.schedule, self.devices, n, self.chunks)
        return self._short_wirings[n]

    def value_and_grad(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """J and gradients of one minibatch, without updating (for checks against the oracle)."""
        r = self.step(x, y, update=False)
        grads: dict[str, np.ndarray] = {}
        for g in self._all("get_grads"):
            grads.update(g)
        self._all("zero_grad")
        return r.J, grads

    def predict(self, x: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """Logits for every row of x: inference steps of up to a minibatch of rows each, in
        micro-batches of at most `chunk` rows (the workers' buffers: at most the engine's),
        carried as a training step's forwards are (on `shm`, through the stages' channels,
        never Ray's object store, whose pages would stay in every stage's memory)."""
        chunk = max(1, min(chunk or self.chunk, self.chunk))
        block = chunk * max(1, self.max_rows // chunk)  # rows a step's channels hold
        outs: list[np.ndarray] = []
        for start in range(0, len(x), block):
            part = x[start : start + block]
            m = -(-len(part) // chunk)
            if m not in self._inference:
                where = self.placement if is_virtual(self.kind) else None
                self._inference[m] = wire_inference(self.devices, m, where)
            xs = [np.ascontiguousarray(part[r]) for r in split_batch(len(part), m)]
            outs += self.transport.run_inference(self._inference[m], xs)
        return np.concatenate(outs) if outs else np.zeros((0, 0))

    # -- state ----------------------------------------------------------------------------------
    @property
    def n_workers(self) -> int:
        return self.plan.k

    def get_params(self) -> dict[str, np.ndarray]:
        """Every stage's parameters, by name (engines/state.py)."""
        return state.gather_params(self.transport, range(self.plan.k))

    def get_state(self, live: bool = False) -> list[dict]:
        """Each stage's parameters, optimizer state and step count (engines/state.py); `live`:
        in process, the workers' own arrays, valid until the next step (no copy of the state)."""
        return state.gather(self.transport, range(self.plan.k), live=live)

    def set_state(self, states: Sequence[Mapping]) -> None:
        state.scatter(self.transport, dict(enumerate(states)))
