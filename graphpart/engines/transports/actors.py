"""What every Ray transport shares: start or join Ray, one actor per stage, calls, errors, close."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import psutil

from graphpart.engines.cluster import first_line, start_ray
from graphpart.errors import StageFailure
from workers import actor as bodies
from workers.stage import WorkerSpec


class RayActors:
    """One Ray actor per stage (the `body` class of workers/actor.py), placed and pinned.

    Stages share the cluster's CPUs (a fractional `num_cpus` when they outnumber them) and
    each actor's BLAS gets cpus // K threads. A call is an actor task; its handle an object
    reference.
    """

    name = "ray"
    body: ClassVar[type[bodies.StageActor]] = bodies.StageActor
    remote_options: ClassVar[dict[str, Any]] = {}
    exit_wait_s = 3.0  # after ray.kill, how long a stage on this machine may take to exit

    def __init__(self, address: str = "", num_cpus: int | None = None) -> None:
        self.address, self.num_cpus = address, num_cpus
        self.actors: list[Any] = []
        self.info: list[dict[str, Any]] = []
        self.started = False

    def start(self, specs: Sequence[WorkerSpec]) -> None:
        import ray

        self.started = start_ray(self.address, self.num_cpus)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        k = len(specs)
        threads = max(1, int(cpus // k))
        opts: dict[str, Any] = dict(
            num_cpus=min(1.0, cpus / k),  # share the cores out when stages outnumber them
            runtime_env={"env_vars": bodies.blas_env(threads)},
        )
        if any(s.device == "cuda" for s in specs):
            opts["num_gpus"] = 1
        cls = (
            ray.remote(**self.remote_options)(self.body)
            if self.remote_options
            else (ray.remote(self.body))
        )
        self.actors = [cls.options(**opts).remote(threads, s) for s in specs]
        self.info = self.get([a.info.remote() for a in self.actors])

    def call(self, stage: int, method: str, *args: Any) -> Any:
        return self.actors[stage].call.remote(method, *args)

    def get(self, handles: Sequence[Any]) -> list[Any]:
        import ray

        try:
            return ray.get(list(handles))
        except ray.exceptions.RayTaskError as e:
            raise StageFailure(first_line(e)) from None
        except ray.exceptions.RayActorError as e:
            raise StageFailure(self.died(e)) from None

    def died(self, e: Exception) -> str:
        """'stage k's worker process died (...)': the stage named from the dead actor's id."""
        dead = getattr(e, "actor_id", None)
        ids = [a._actor_id.hex() for a in self.actors]
        who = f"stage {ids.index(dead)}" if dead in ids else "a stage"
        return f"{who}'s worker process died ({first_line(e)})"

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
        _, alive = psutil.wait_procs(procs, timeout=self.exit_wait_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    def close(self) -> None:
        import ray

        self.kill_actors()
        self.actors = []
        if self.started and ray.is_initialized():
            ray.shutdown()
            self.started = False
