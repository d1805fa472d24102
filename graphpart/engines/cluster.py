"""Ray for the engines: start a local Ray or join a cluster, and turn Ray's errors into one line."""

from __future__ import annotations

import os
import socket
from typing import Any

from graphpart.engines.reaper import watch as watch_driver
from graphpart.errors import ConfigError

# Ray's own switch (ray_constants.ENABLE_RAY_CLUSTER, read when a node starts): off, a node
# takes the loopback address as its IP, so its GCS, raylet, object manager and workers
# listen on 127.0.0.1 only. A user who sets the variable keeps their choice.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def local_only() -> None:
    """Make the next local Ray this process starts listen on 127.0.0.1 only."""
    os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    from ray._private import ray_constants  # the constant is read at import: set it too

    ray_constants.ENABLE_RAY_CLUSTER = os.environ[LOCAL_ONLY_ENV].lower() in ("1", "true")


def start_ray(address: str = "", num_cpus: int | None = None) -> bool:
    """Start a local Ray (default; it listens on 127.0.0.1 only) or join `address`; True if
    this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kw: dict[str, Any] = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    if address:
        check_reachable(address)
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
        local_only()
        watch_driver()  # no Ray process of ours outlives this one, however it ends
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kw)
    return True


def describe_cluster() -> str:
    """Which Ray this process is connected to: its GCS address, nodes and CPUs."""
    import ray

    ctx = ray.get_runtime_context()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = ray.cluster_resources().get("CPU", 0)
    return f"Ray cluster at {ctx.gcs_address}: {len(nodes)} node(s), {cpus:g} CPU(s)"


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on host:port addresses nobody listens on (ray.init would retry for minutes)."""
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


def first_line(e: BaseException) -> str:
    """The innermost stage's message, without Ray's traceback text."""
    text = str(e)
    for line in text.splitlines():
        if line.startswith("RuntimeError: stage "):
            return line[len("RuntimeError: ") :]
    cause = getattr(e, "cause", None)
    return str(cause) if cause is not None else text.splitlines()[-1]
