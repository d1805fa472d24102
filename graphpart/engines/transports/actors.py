"""What every Ray transport shares: start or join Ray, one actor per stage, calls, errors, close."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import psutil

from graphpart.engines.cluster import first_line, start_ray, stop_ray
from graphpart.engines.transports.serving import Serving
from graphpart.errors import ConfigError, StageFailure
from workers import actor as bodies
from workers.stage import WorkerSpec

GPU_SHARE_DIGITS = 4  # Ray counts fractional resources to 1e-4


def gpus_per_stage(gpus: float, stages: int) -> float:
    """Ray's `num_gpus` for each of `stages` CUDA stage actors on a cluster with `gpus` GPUs.

    One GPU each when there are enough; otherwise the stages share them evenly: a stage asks
    for 1 / ceil(stages / whole GPUs) of one (a fractional request must fit on a single GPU,
    so 4 stages on 3 GPUs ask for 1/2 each, not 3/4), rounded down to Ray's precision. No GPU
    at all is a one-line ConfigError rather than actors that wait for ever.

    >>> gpus_per_stage(4, 2), gpus_per_stage(1, 2), gpus_per_stage(3, 4), gpus_per_stage(1, 3)
    (1.0, 0.5, 0.5, 0.3333)
    """
    whole = int(gpus)
    if stages < 1:
        raise ValueError(f"stages={stages}; need at least 1")
    if whole < 1:
        raise ConfigError(
            f"device='cuda' with {stages} pipeline stage(s) needs a GPU in the Ray cluster; it "
            f"has {gpus:g} (check with nvidia-smi and ray status, or use --device cpu)"
        )
    if whole >= stages:
        return 1.0
    per_gpu = -(-stages // whole)
    return math.floor(10**GPU_SHARE_DIGITS / per_gpu) / 10**GPU_SHARE_DIGITS


_STOPPED = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
_HALTED = (*_STOPPED, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def _reason(e: Exception) -> str:
    """Ray's account of an actor's death, in one line: the exit type, else its first line."""
    text = str(e)
    m = re.search(r"Worker exit type: (\w+)", text)
    if m:
        return f"killed or crashed: exit type {m.group(1)}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].rstrip(".") if lines else type(e).__name__


class RayActors:
    """One Ray actor per stage (the `body` class of workers/actor.py), placed and pinned.

    Stages share the cluster's CPUs (a fractional `num_cpus` when they outnumber them) and
    each actor's BLAS gets cpus // K threads. CUDA stages get a GPU each, or an even share of
    one when they outnumber the GPUs (`gpus_per_stage`). A call is an actor task; its handle
    an object reference.
    """

    name = "ray"
    in_process = False
    body: ClassVar[type[bodies.StageActor]] = bodies.StageActor
    # a device of virtual stages (`start` with an owner): its chunks' workers, `call_chunk`
    device_body: ClassVar[type[bodies.StageActor]] = bodies.StageActor
    remote_options: ClassVar[dict[str, Any]] = {}
    exit_wait_s = 3.0  # after ray.kill, how long a stage on this machine may take to exit
    first_deadline_s = 300.0  # ... before three steps have been timed
    min_deadline_s = 60.0  # ... at least, after
    unit = "stage"  # what the failure messages call a worker

    def __init__(
        self, address: str = "", num_cpus: int | None = None, step_timeout_s: float = 0.0
    ) -> None:
        self.address, self.num_cpus = address, num_cpus
        self.step_timeout_s = float(step_timeout_s)  # the wait for a step (0: from step times)
        self.actors: list[Any] = []
        self.info: list[dict[str, Any]] = []
        self.started = False
        self._times: list[float] = []  # the last steps' durations (seconds)
        self.owner: tuple[int, ...] = ()  # virtual stages: stage -> its device's actor
        # steps through the workers' FIFOs instead of Ray calls (serving.py), where a
        # transport sets it up: every worker on this machine
        self.serving: Serving | None = None

    def quiesce(self) -> None:
        """Stop the workers' serve loops, if running, so that they take Ray calls again (the
        next step starts them again). Every call other than a step's goes through here."""
        if self.serving is not None:
            self.serving.stop()

    # -- liveness ---------------------------------------------------------------------------------
    def deadline_s(self) -> float:
        """How long the driver waits for a step: `step_timeout_s` when set, else 20x the
        slowest of the last 20 steps (at least `min_deadline_s`; `first_deadline_s` until
        three steps have been timed)."""
        if self.step_timeout_s > 0:
            return self.step_timeout_s
        if len(self._times) < 3:
            return self.first_deadline_s
        return max(self.min_deadline_s, 20 * max(self._times[-20:]))

    def timed(self, t0: float) -> None:
        """Record a step that began at `t0` (time.perf_counter) and ended now."""
        self._times = [*self._times[-19:], time.perf_counter() - t0]

    def stopped(self) -> list[int | str]:
        """The stages whose process on this machine is stopped (SIGSTOP, a debugger) or gone:
        their index, or "pid N" for a stage actor of our own local Ray that has not said which
        stage it is yet (stopped while it starts)."""
        here, out, known = os.uname().nodename, [], set()
        for k, info in enumerate(self.info):
            if info.get("node") != here or info.get("pid") is None:
                continue
            known.add(int(info["pid"]))
            try:
                if psutil.Process(int(info["pid"])).status() in _HALTED:
                    out.append(k)
            except psutil.NoSuchProcess:
                out.append(k)
        if len(self.info) < len(self.actors):  # still starting: which stage is not known yet
            for p in self._own_processes():
                try:
                    if p.pid not in known and p.status() in _HALTED:
                        out.append(f"pid {p.pid}")
                except psutil.NoSuchProcess:
                    pass
        return out

    def _own_processes(self) -> list[psutil.Process]:
        """This transport's actor processes under the local Ray this process started (none
        when it joined a cluster)."""
        if not self.started:
            return []
        name, out = f"ray::{getattr(self, '_body_name', self.body.__name__)}", []
        for p in psutil.Process().children(recursive=True):
            try:
                if " ".join(p.cmdline()).startswith(name):
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def worker_name(self, k: int | str) -> str:
        """How messages name worker k: "stage 2" (or "stage pid N": one not known yet)."""
        return f"{self.unit} {k}"

    def stall_message(
        self,
        who: Sequence[int | str],
        what: str,
        step: int | None,
        deadline: float,
        elapsed: float | None = None,
        stopped: bool = False,
    ) -> str:
        """What was seen: a stage whose process is stopped or gone (by its process state, at
        `elapsed` seconds into the step or call), or one that did not answer by the deadline."""
        names = ", ".join(self.worker_name(k) for k in who) or f"a {self.unit}"
        when = f"step {step}" if step is not None else "a call"
        if stopped:
            took = f"{elapsed:.1f} s into {when}" if elapsed is not None else f"during {when}"
            return (
                f"{names} {what}: its process is stopped or gone (seen by its process state {took})"
            )
        waited = f"{when} did not end" if step is not None else "a call did not return"
        return (
            f"{names} {what}: {waited} within {deadline:.0f} s (a stalled or overloaded "
            "process; pipeline.step_timeout sets the wait)"
        )

    def call_timeout_s(self) -> float:
        """How long a call outside a step (start-up, state, inference) may take."""
        if len(self._times) < 3:
            return max(self.first_deadline_s, self.step_timeout_s)
        return max(self.deadline_s(), self.min_deadline_s)

    def start(self, specs: Sequence[WorkerSpec], owner: Sequence[int] = ()) -> None:
        """One actor per stage; with `owner` (virtual stages: stage s on device owner[s]),
        one per device, holding its stages' workers, chunk 0 first."""
        import ray

        self.owner = tuple(owner)
        self.started = start_ray(self.address, self.num_cpus)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        groups: list[Any] = list(specs)
        if self.owner:
            devices = max(self.owner) + 1
            groups = [
                tuple(sp for sp, d in zip(specs, self.owner, strict=True) if d == dev)
                for dev in range(devices)
            ]
        k = len(groups)
        threads = max(1, int(cpus // k))
        opts: dict[str, Any] = dict(
            num_cpus=min(1.0, cpus / k),  # share the cores out when stages outnumber them
            runtime_env={"env_vars": bodies.worker_env(threads)},
        )
        if any(sp.device == "cuda" for sp in specs):
            opts["num_gpus"] = gpus_per_stage(float(ray.cluster_resources().get("GPU", 0.0)), k)
        body = self.device_body if self.owner else self.body
        self._body_name = body.__name__
        cls = ray.remote(**self.remote_options)(body) if self.remote_options else ray.remote(body)
        where = self.nodes_for(k)
        self.actors = [
            cls.options(**opts, **_on(node)).remote(threads, g)
            for g, node in zip(groups, where, strict=True)
        ]
        self.info = self.get([a.info.remote() for a in self.actors])

    def nodes_for(self, workers: int) -> list[str | None]:
        """The Ray node id each worker should start on (None: wherever Ray places it)."""
        return [None] * workers

    def call(self, stage: int, method: str, *args: Any) -> Any:
        self.quiesce()
        if self.owner:  # virtual stages: the stage's chunk on its device's actor
            d = self.owner[stage]
            chunk = self.owner[:stage].count(d)
            return self.actors[d].call_chunk.remote(chunk, method, *args)
        return self.actors[stage].call.remote(method, *args)

    def get(self, handles: Sequence[Any], timeout: float | None = None) -> list[Any]:
        """The calls' results. A stage that stops answering ends the wait: at once when its
        process here is stopped, else after `timeout` (default `call_timeout_s()`)."""
        import ray

        self.quiesce()  # a call made straight on an actor waits behind its serve loop
        limit = self.call_timeout_s() if timeout is None else timeout
        end, pending = time.perf_counter() + limit, list(handles)
        while pending:
            left = end - time.perf_counter()
            _, pending = ray.wait(
                pending, num_returns=len(pending), timeout=max(0.0, min(1.0, left))
            )
            stopped = self.stopped() if pending else []
            if stopped or (pending and left <= 0):
                what = "stopped answering" if stopped else "did not answer"
                elapsed = limit - max(0.0, end - time.perf_counter())
                raise StageFailure(
                    self.stall_message(stopped, what, None, limit, elapsed, bool(stopped))
                )
        try:
            return ray.get(list(handles))
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)  # a call given a dead stage's result: that death
            if isinstance(cause, ray.exceptions.RayActorError):
                raise StageFailure(self.died(cause)) from None
            raise StageFailure(first_line(e)) from None
        except ray.exceptions.RayActorError as e:
            raise StageFailure(self.died(e)) from None

    def died(self, e: Exception) -> str:
        """'stage k's worker process died (...)': the stage named from the dead actor's id,
        and Ray's reason in one sentence (its advice about OOM killers and logs left out)."""
        dead = getattr(e, "actor_id", None)
        ids = [a._actor_id.hex() for a in self.actors]
        who = self.worker_name(ids.index(dead)) if dead in ids else f"a {self.unit}"
        return f"{who}'s worker process died ({_reason(e)})"

    def kill_actors(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        # a stopped (SIGSTOP) or wedged process ignores Ray's request: on this machine, give
        # the stages a moment to exit, then make sure none outlives the run
        here = os.uname().nodename
        procs = []
        for info in self.info:
            if info.get("node") == here and info.get("pid") not in (None, os.getpid()):
                try:
                    procs.append(psutil.Process(int(info["pid"])))
                except psutil.NoSuchProcess:
                    pass
        pids = {p.pid for p in procs}
        procs += [p for p in self._own_processes() if p.pid not in pids and _status(p) in _STOPPED]
        for p in procs:  # a stopped process cannot exit by itself: no need to wait for it
            try:
                if p.status() in _STOPPED:
                    p.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=self.exit_wait_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    def close(self) -> None:
        import ray

        if self.serving is not None:
            self.serving.close()  # the loops end with the workers
        self.kill_actors()
        self.actors = []
        if self.started and ray.is_initialized():
            stop_ray()
            self.started = False


def _status(p: psutil.Process) -> str:
    try:
        return p.status()
    except psutil.NoSuchProcess:
        return psutil.STATUS_DEAD


def _on(node: str | None) -> dict[str, Any]:
    """Ray options that start an actor on `node` if it can (soft: elsewhere if it cannot)."""
    if node is None:
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}
