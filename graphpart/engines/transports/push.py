"""Transport `push`: one call per stage a step; stages push boundary tensors to each other.

The driver hands each stage its own action list (the wiring's routing included), the first
stage the micro-batch inputs and the last the labels; each stage sends its outputs as direct
actor calls into its neighbour's inbox (workers/push.py, workers/actor.py). So the driver
makes K calls a step instead of 2MK + K and is off every hop, as in PiPPy's point-to-point
sends. A stage that fails tells its neighbours; the driver re-raises the failure that started
it, not the neighbours' stops that followed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from graphpart.engines.cluster import first_line
from graphpart.engines.transports.actors import RayActors
from graphpart.engines.transports.serving import Serving
from graphpart.engines.wiring import StepFeed, StepWiring
from graphpart.errors import StageFailure
from workers import actor as bodies
from workers import device_actor
from workers.stage import WorkerSpec
from workers.stats import Finish


class Push(RayActors):
    """One actor per stage, one `run_step` call per stage a step, tensors pushed stage to stage."""

    name = "push"
    virtual_stages = True  # a device's actor runs its chunks (workers/push.py)
    body = bodies.PushStageActor
    device_body = device_actor.PushDeviceActor
    remote_options: ClassVar[dict[str, Any]] = {"concurrency_groups": {bodies.INBOX_GROUP: 1}}
    neighbour_wait_s = 600.0  # how long a stage waits for a neighbour's tensor

    def __init__(
        self, address: str = "", num_cpus: int | None = None, step_timeout_s: float = 0.0
    ) -> None:
        super().__init__(address, num_cpus, step_timeout_s)
        self.steps = StepCalls(self)

    def start(self, specs: Sequence[WorkerSpec], owner: Sequence[int] = ()) -> None:
        super().start(specs, owner)
        self._connect(specs)

    def _connect(self, specs: Sequence[WorkerSpec]) -> None:
        """Tell each stage its neighbours (actor handles it sends to); with virtual stages,
        each device the device that takes each tag it sends (`routes`)."""
        k = len(self.actors)
        if self.owner:
            self.get(
                [
                    a.connect_routes.remote(*self._routes(d, set()))
                    for d, a in enumerate(self.actors)
                ]
            )
            return
        self.get(
            [
                a.connect.remote(
                    self.actors[i - 1] if i > 0 else None, self.actors[i + 1] if i < k - 1 else None
                )
                for i, a in enumerate(self.actors)
            ]
        )

    def _routes(self, device: int, near: set[int]) -> tuple[list[Any], dict[str, Any]]:
        """Device `device`'s peers and, per tag it sends ("F3": virtual stage 3's
        activations, "B4": stage 4's cotangents), the actor that takes it; devices in `near`
        are left out of the tags (a channel carries those)."""
        owner, peers, routes = self.owner, {}, {}
        for s in range(len(owner) - 1):  # the boundary between virtual stages s and s + 1
            a, b = owner[s], owner[s + 1]
            for src, dst, tag in ((a, b, f"F{s}"), (b, a, f"B{s + 1}")):
                if src == device and dst != device:
                    peers[dst] = self.actors[dst]
                    if dst not in near:
                        routes[tag] = self.actors[dst]
        return list(peers.values()), routes

    def _ends(self, wiring: StepWiring) -> tuple[int, int]:
        """The workers that take the micro-batch inputs and the labels."""
        if wiring.virtual:
            return wiring.owner[0], wiring.owner[-1]
        return 0, wiring.devices - 1

    def _by_stage(self, wiring: StepWiring, results: list[Any]) -> list[Any]:
        """The workers' results by stage (a device's: one per chunk, in the stages' order)."""
        if not wiring.virtual:
            return results
        out = []
        for s, d in enumerate(wiring.owner):
            out.append(results[d][wiring.owner[:s].count(d)])
        return out

    def run_step(self, wiring: StepWiring, feed: StepFeed[np.ndarray]) -> list[Finish]:
        step, (first, last) = self.steps.next(), self._ends(wiring)
        calls = [
            (
                "run_step",
                (
                    step,
                    wiring.stages[k],
                    self._inputs(feed, step) if k == first else None,
                    list(feed.ys) if k == last else None,
                    feed.scale,
                    feed.update,
                    self.neighbour_wait_s,
                ),
            )
            for k in range(len(self.actors))
        ]
        return self._by_stage(wiring, self.steps.run(calls, step))

    def run_inference(self, wiring: StepWiring, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One call per stage, as a step: the inputs fed to stage 0 as a step's are, the
        boundary tensors pushed stage to stage, the last stage's outputs returned."""
        step, (first, last) = self.steps.next(), self._ends(wiring)
        feed = StepFeed(xs=xs, ys=(), scale=1.0, update=False)
        calls = [
            (
                "run_step",
                (
                    step,
                    wiring.stages[k],
                    self._inputs(feed, step) if k == first else None,
                    None,
                    1.0,
                    False,
                    self.neighbour_wait_s,
                    True,
                ),
            )
            for k in range(len(self.actors))
        ]
        return self.steps.run(calls, step)[last]

    def _inputs(self, feed: StepFeed[np.ndarray], step: int) -> Any:
        """What stage 0's run_step gets for the micro-batch inputs (here: the arrays, as Ray
        call arguments)."""
        return list(feed.xs)


class StepCalls:
    """One call per actor a step (push, shm, the data-parallel ring): the results as they come;
    on a failure, every actor of the step woken and the failure that started it re-raised (not
    a neighbour's "stopped" that followed); a step past the deadline: the stalled actors named.
    """

    abort_wait_s = 60.0  # how long the driver waits for the other actors to stop after a failure
    ping_s = 2.0  # how long an actor may take to answer a ping when a step stalls

    def __init__(self, transport: RayActors) -> None:
        self.t = transport
        self.step_id = 0

    def next(self) -> int:
        """The next step's id (the key of its tensors in the actors' inboxes)."""
        self.step_id += 1
        return self.step_id

    def run(self, calls: Sequence[tuple[str, tuple[Any, ...]]], step: int) -> list[Any]:
        """Call calls[k] = (method, args) on actor k and collect the results as `collect`
        does: through the actors' serve loops where the transport has them (serving.py: no
        Ray call a step), else as Ray calls."""
        srv = self.t.serving
        if srv is None:
            pairs = zip(self.t.actors, calls, strict=True)
            refs = [getattr(a, m).remote(*args) for a, (m, args) in pairs]
            return self.collect(refs, step)
        srv.start()
        for k, (m, args) in enumerate(calls):
            srv.send(k, m, args)
        return self._collect_served(srv, step)

    def _collect_served(self, srv: Serving, step: int) -> list[Any]:
        """`collect` for calls sent to serve loops: each answer as it comes; a failure wakes
        every actor and re-raises the one that started it; a death ends the wait at once; a
        step past the deadline names the stalled actors. After a failure the loops are
        stopped (the next step starts them afresh)."""
        t0, deadline = time.perf_counter(), self.t.deadline_s()
        n = len(self.t.actors)
        results: list[Any] = [None] * n
        pending, causes, stops = set(range(n)), [], []

        def take(ks: Sequence[int]) -> None:
            for k in ks:
                status, value = srv.receive(k)
                pending.discard(k)
                if status == "ok":
                    results[k] = value
                else:
                    (stops if " stopped: " in value else causes).append(value)

        while pending and not (causes or stops):
            left = t0 + deadline - time.perf_counter()
            if left <= 0:
                self.abort_all(step, "the step was abandoned: a stage stalled")
                late = sorted(pending)
                srv.close()
                raise StageFailure(self._stalled(late, step, deadline, time.perf_counter() - t0))
            take(srv.ready(pending, min(0.05, left)))
            for k, e in srv.dead() if pending else []:
                pending.discard(k)
                causes.append(self._cause(e))
        if not (causes or stops):
            self.t.timed(t0)
            return results
        self.abort_all(step, "the step was abandoned after a failure elsewhere")
        end = time.perf_counter() + self.abort_wait_s
        while pending and time.perf_counter() < end:
            take(srv.ready(pending, min(0.05, end - time.perf_counter())))
            for k, e in srv.dead() if pending else []:
                pending.discard(k)
                causes.append(self._cause(e))
        if pending:
            stops.append(f"a stage did not stop within {self.abort_wait_s:.0f} s of the failure")
        srv.close()
        raise StageFailure((causes or stops or ["a stage failed"])[0])

    def _cause(self, e: BaseException) -> str:
        """A serve loop's end as a failure's cause: a dead worker named, else its message."""
        import ray

        if isinstance(e, ray.exceptions.RayActorError):
            return self.t.died(e)
        return first_line(e)

    def collect(self, refs: list[Any], step: int) -> list[Any]:
        """The stages' results; on a failure, wake every stage of the step and re-raise the
        failure that started it (not a neighbour's "stopped" that followed). A step that does
        not end within `deadline_s()` is a stall: the stages that no longer answer are named."""
        import ray

        t0, deadline = time.perf_counter(), self.t.deadline_s()
        pending, failed = list(refs), False
        while pending and not failed:  # each result as it comes: a failure ends the wait
            left = t0 + deadline - time.perf_counter()
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, left))
            if not ready:
                self.abort_all(step, "the step was abandoned: a stage stalled")
                late = [k for k, r in enumerate(refs) if r in pending]
                raise StageFailure(self._stalled(late, step, deadline, time.perf_counter() - t0))
            try:
                ray.get(ready)
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError):
                failed = True
        if not failed:
            self.t.timed(t0)
            return ray.get(refs)
        self.abort_all(step, "the step was abandoned after a failure elsewhere")
        causes, stops = [], []
        for r in refs:
            try:
                ray.get(r, timeout=self.abort_wait_s)
            except ray.exceptions.RayTaskError as e:
                msg = first_line(e)
                (stops if " stopped: " in msg else causes).append(msg)
            except ray.exceptions.RayActorError as e:
                causes.append(self.t.died(e))
            except ray.exceptions.GetTimeoutError:
                stops.append(
                    f"a stage did not stop within {self.abort_wait_s:.0f} s of the failure"
                )
        raise StageFailure((causes or stops or ["a stage failed"])[0])

    def abort_all(self, step: int, why: str) -> None:
        for a in self.t.actors:
            try:
                a.abort.options(concurrency_group=bodies.INBOX_GROUP).remote(step, why)
            except Exception:  # noqa: BLE001 - that actor is gone
                pass

    def _stalled(self, late: list[int], step: int, deadline: float, elapsed: float) -> str:
        """Which stages stopped answering (no reply to a ping on their inbox thread, which
        answers even while a step runs), else which did not finish."""
        import ray

        pings = [
            a.alive.options(concurrency_group=bodies.INBOX_GROUP).remote() for a in self.t.actors
        ]
        ready, _ = ray.wait(pings, num_returns=len(pings), timeout=self.ping_s)
        silent = [k for k, p in enumerate(pings) if p not in ready]
        stopped = self.t.stopped()
        who = stopped or silent or late
        what = "stopped answering" if stopped or silent else "did not finish"
        return self.t.stall_message(who, what, step, deadline, elapsed, bool(stopped))
