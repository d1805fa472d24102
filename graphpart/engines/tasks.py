"""The Ray driver: starts (or joins) Ray, places one actor per stage, runs the schedule on them.

Boundary tensors move actor to actor as object references: the driver passes the reference
that stage k-1's forward returned straight into stage k's forward (and gradients the other
way), so it never fetches or copies them. Each stage's actions are submitted in its schedule's
order; Ray runs one caller's calls on an actor in submission order, waiting for each call's
arguments, which makes the submitted order the executed order.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from graphpart.engines.engine import Engine, stage_kwargs
from graphpart.errors import ConfigError, StageFailure
from graphpart.optim import Optimizer
from graphpart.params import Params, stage_params
from graphpart.plan.partition import Plan


def start_ray(address: str = "", num_cpus: int | None = None) -> bool:
    """Start a local Ray (default) or join `address`; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kw: dict[str, Any] = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, ValueError, RuntimeError) as e:
            hint = "start one with `ray start --head` or leave the address empty for a local Ray"
            if address != "auto" and not os.environ.get("RAY_AUTH_MODE"):
                hint = (
                    "if the cluster uses token authentication, set RAY_AUTH_MODE=token "
                    "(Ray enables it only for address 'auto'); " + hint
                )
            raise ConfigError(
                f"pipeline.address={address!r}: cannot join a Ray cluster there "
                f"({str(e).splitlines()[0]}); {hint}"
            ) from None
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kw)
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on host:port addresses nobody listens on (ray.init would retry for minutes)."""
    import socket

    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"pipeline.address={address!r}: expected auto, host:port or ray://host:port"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(
            f"pipeline.address={address!r}: nothing answers at {host}:{port} "
            f"({e.strerror or e}); is the cluster up (`ray start --head`)?"
        ) from None


class RayEngine(Engine):
    """One Ray actor per stage; the step logic is Engine.step, with object references."""

    actor_class = "StageActor"  # in workers/actor.py

    def __init__(
        self,
        plan: Plan,
        params: Params,
        optimizer: Optimizer,
        *,
        address: str = "",
        microbatches: int = 1,
        schedule: str = "1f1b",
        max_rows: int,
        device: str = "cpu",
        recompute: bool = False,
        keep_events: bool = True,
        num_cpus: int | None = None,
    ) -> None:
        import ray

        from workers import actor as actors

        self.plan = plan
        self._setup_schedule(schedule, microbatches)
        self.started = start_ray(address, num_cpus)
        self.actors: list[Any] = []
        try:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            per = min(1.0, cpus / plan.k)  # share the cores out when stages outnumber them
            threads = max(1, int(cpus // plan.k))
            rows = max(1, -(-max_rows // self.microbatches))
            self.chunk = rows
            opts: dict[str, Any] = dict(
                num_cpus=per, runtime_env={"env_vars": actors.blas_env(threads)}
            )
            if device == "cuda":
                opts["num_gpus"] = 1
            cls = getattr(actors, self.actor_class)
            for st in plan.stages:
                a = cls.options(**opts).remote(
                    threads,
                    st.graph,
                    stage_params(st.graph, params),
                    optimizer,
                    keep_events=keep_events,
                    **stage_kwargs(plan, st.index, rows, device, recompute),
                )
                self.actors.append(a)
            self.info = self._get([a.info.remote() for a in self.actors])
        except BaseException:
            self.close()
            raise

    def _call(self, k: int, method: str, *args: Any) -> Any:
        return self.actors[k].call.remote(method, *args)

    def _get(self, handles: list[Any]) -> list[Any]:
        import ray

        try:
            return ray.get(handles)
        except ray.exceptions.RayTaskError as e:
            raise StageFailure(_first_line(e)) from None
        except ray.exceptions.RayActorError as e:
            raise StageFailure(f"a stage's worker process died: {_first_line(e)}") from None

    def _feed(self, x: np.ndarray) -> Any:
        return np.ascontiguousarray(x)

    def predict(self, x: np.ndarray, chunk: int | None = None) -> np.ndarray:
        return super().predict(x, chunk or self.chunk)

    def close(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        if self.started and ray.is_initialized():
            ray.shutdown()
            self.started = False


def _first_line(e: BaseException) -> str:
    """The innermost stage's message, without Ray's traceback text."""
    text = str(e)
    for line in text.splitlines():
        if line.startswith("RuntimeError: stage "):
            return line[len("RuntimeError: ") :]
    cause = getattr(e, "cause", None)
    return str(cause) if cause is not None else text.splitlines()[-1]
