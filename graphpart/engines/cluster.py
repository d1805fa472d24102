"""Ray for the engines: start a local Ray or join a cluster, and turn Ray's errors into one line."""

from __future__ import annotations

import atexit
import os
import statistics
import time
from typing import Any

from graphpart.engines.join import join
from graphpart.engines.reaper import watch as watch_driver

# Ray's own switch (ray_constants.ENABLE_RAY_CLUSTER, read when a node starts): off, a node
# takes the loopback address as its IP, so its GCS, raylet, object manager and workers
# listen on 127.0.0.1 only. A user who sets the variable keeps their choice.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Set to 1 for the local Ray `ray.init()` starts by itself (its API server, log monitor and
# autoscaler monitor included) instead of the lean head below.
FULL_RAY_ENV = "GRAPHPART_FULL_RAY"

# Ray's switch for task events (RayConfig task_events_report_interval_ms; 0: none reported)
TASK_EVENTS_ENV = "RAY_task_events_report_interval_ms"

_lean_head: Any = None  # the head node start_ray started itself (ray._private.node.Node)


def local_only() -> None:
    """Make the next local Ray this process starts listen on 127.0.0.1 only."""
    os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    from ray._private import ray_constants  # the constant is read at import: set it too

    ray_constants.ENABLE_RAY_CLUSTER = os.environ[LOCAL_ONLY_ENV].lower() in ("1", "true")


def start_ray(
    address: str = "",
    num_cpus: int | None = None,
    *,
    num_gpus: int | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> bool:
    """Start a local Ray (default; it listens on 127.0.0.1 only) or join `address`; True if
    this call started it. Stop it with `stop_ray()`."""
    import ray

    if ray.is_initialized():
        return False
    # Ray keeps every task's events in its GCS (up to task_events_max_num_task_in_gcs, 100 000
    # tasks: ~8 MiB per 1 000 steps, to ~365 MiB). Nothing of graphpart reads them (no
    # dashboard), so no process of ours reports them; a user's own setting wins.
    os.environ.setdefault(TASK_EVENTS_ENV, "0")
    kw: dict[str, Any] = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    if runtime_env:
        kw["runtime_env"] = runtime_env
    if address:
        # workers of a joined cluster start from its raylets' environment, not ours
        env_vars = {TASK_EVENTS_ENV: os.environ[TASK_EVENTS_ENV]}
        kw["runtime_env"] = {
            **kw.get("runtime_env", {}),
            "env_vars": {**env_vars, **kw.get("runtime_env", {}).get("env_vars", {})},
        }
        join(address, kw)
    else:
        local_only()
        watch_driver()  # no Ray process of ours outlives this one, however it ends
        cpus = num_cpus or os.cpu_count() or 1
        if not _start_lean_head(cpus, num_gpus, kw):
            ray.init(num_cpus=cpus, num_gpus=num_gpus, **kw)
    return True


def _start_lean_head(num_cpus: int, num_gpus: int | None, kw: dict[str, Any]) -> bool:
    """Start a local head node with only what graphpart uses, and connect to it; False (and
    nothing started) where this Ray cannot, so the caller falls back to `ray.init()`.

    `ray.init()` also starts the API server (dashboard.py, even with include_dashboard=False),
    the log monitor and the autoscaler monitor; graphpart uses none of them (stage errors come
    back as exceptions, the workers' logs stay in Ray's session folder). Without them, on this
    2-core machine: ray.init 3.9 -> 2.0 s, Ray's processes 9 -> 6 and 622 -> 384 MiB resident,
    shutdown 1.4 -> 0.35 s (docs/benchmarks.md). The node is Ray's own `Node`, started as
    `ray.init()` starts it, token authentication included; only `ray.init()` does not expose
    these switches, hence the private names, and hence the fallback."""
    global _lean_head
    import ray

    _stop_lean_head()  # one left by a plain ray.shutdown() since: not two heads at once
    if os.environ.get(FULL_RAY_ENV, "") not in ("", "0") or os.environ.get("RAY_ADDRESS"):
        return False
    try:
        from ray._private.node import Node
        from ray._private.parameter import RayParams
    except ImportError:
        return False
    try:
        from ray._private.authentication import authentication_token_setup as auth
    except ImportError:
        auth = None

    class LeanNode(Node):  # type: ignore[misc]
        def start_api_server(self, **_: Any) -> None:
            self._webui_url = None

    try:
        if auth is not None:  # as ray.init() for a new local cluster, without its warning
            if auth.AUTH_MODE_ENV_VAR not in os.environ:
                auth._enable_token_auth()
            auth.ensure_token_if_auth_enabled({}, create_token_if_missing=True)
        params = RayParams(  # the node's IP as ray.init() picks it: loopback after local_only()
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            include_log_monitor=False,
            no_monitor=True,
        )
        head = LeanNode(
            params, head=True, shutdown_at_exit=False, spawn_reaper=True, ray_init_cluster=True
        )
    except (TypeError, AttributeError, ValueError):
        return False
    _lean_head = head
    atexit.unregister(_stop_lean_head)
    atexit.register(_stop_lean_head)  # runs after ray's own atexit disconnect (LIFO)
    try:
        ray.init(address=head.address, **{**kw, "log_to_driver": False})
    except BaseException:
        _stop_lean_head()
        raise
    return True


def _stop_lean_head() -> None:
    global _lean_head
    head, _lean_head = _lean_head, None
    if head is not None:
        head.kill_all_processes(check_alive=False, allow_graceful=True)


def stop_ray() -> None:
    """Disconnect from Ray and stop the local Ray `start_ray` started, if it did."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _stop_lean_head()


def describe_cluster() -> str:
    """Which Ray this process is connected to: its GCS address, nodes and CPUs."""
    import ray

    ctx = ray.get_runtime_context()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = ray.cluster_resources().get("CPU", 0)
    return f"Ray cluster at {ctx.gcs_address}: {len(nodes)} node(s), {cpus:g} CPU(s)"


class _Echo:
    """An actor that answers at once: what a call through Ray costs by itself."""

    def ping(self) -> None:
        return None


def call_seconds(
    workers: int, repeats: int = 30, num_cpus: int | None = None, address: str = ""
) -> float:
    """Seconds of the driver's call to `workers` Ray actors at once and their replies, the
    median of `repeats` (after one untimed): the fixed cost an engine's step pays for its
    one call to each worker. Uses the Ray this process is connected to, else joins
    `address` or starts a local one (`num_cpus`), and leaves it afterwards."""
    import ray

    started = start_ray(address, num_cpus=num_cpus)
    actors: list[Any] = []
    try:
        echo = ray.remote(num_cpus=0)(_Echo)
        actors = [echo.remote() for _ in range(max(1, int(workers)))]
        times = []
        for i in range(int(repeats) + 1):
            t = time.perf_counter()
            ray.get([a.ping.remote() for a in actors])
            if i:
                times.append(time.perf_counter() - t)
        return statistics.median(times)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            stop_ray()


def first_line(e: BaseException) -> str:
    """The innermost stage's message, without Ray's traceback text."""
    text = str(e)
    for line in text.splitlines():
        if line.startswith("RuntimeError: stage "):
            return line[len("RuntimeError: ") :]
    cause = getattr(e, "cause", None)
    return str(cause) if cause is not None else text.splitlines()[-1]
