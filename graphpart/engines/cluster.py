"""Ray for the engines: start a local Ray or join a cluster, and turn Ray's errors into one line."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from graphpart.engines.reaper import watch as watch_driver
from graphpart.errors import ConfigError

# Ray's own switch (ray_constants.ENABLE_RAY_CLUSTER, read when a node starts): off, a node
# takes the loopback address as its IP, so its GCS, raylet, object manager and workers
# listen on 127.0.0.1 only. A user who sets the variable keeps their choice.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Set to 1 for the local Ray `ray.init()` starts by itself (its API server, log monitor and
# autoscaler monitor included) instead of the lean head below.
FULL_RAY_ENV = "GRAPHPART_FULL_RAY"

# Ray's switch for task events (RayConfig task_events_report_interval_ms; 0: none reported)
TASK_EVENTS_ENV = "RAY_task_events_report_interval_ms"
# Ray's count of GCS connection tries (about 1 s each) when a driver joins; default 20
RETRY_ENV = "RAY_gcs_server_port_wait_time_s"
REACH_TIMEOUT_S = 5.0  # a TCP connection to a cluster's GCS port
PROBE_TIMEOUT_S = 10.0  # a GCS that accepts connections answers a cluster id request
JOIN_TIMEOUT_S = 5.0  # Ray's own tries once the checks passed

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


def join(address: str, kw: dict[str, Any]) -> None:
    """Join the Ray cluster at `address` (host:port, auto, ray://...) or end within seconds
    with one line that says why: nothing answers, the credentials are refused, or `auto`
    found only another program's private local Ray. Ray's own log lines go to a file, not
    to the terminal (the error names the file when they might help)."""
    import ray

    target = resolve(address)
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept for the error message
        prefix="graphpart-ray-join-", suffix=".log", delete=False
    )
    saved = {k: os.environ.get(k) for k in (RETRY_ENV,)}
    os.environ.setdefault(RETRY_ENV, str(int(JOIN_TIMEOUT_S)))  # Ray's GCS retries, ~1 s each
    try:
        with _stderr_to(log.fileno()):
            ray.init(address=address, **kw)
    except Exception as e:  # noqa: BLE001 - any failure to join is this one line
        raise ConfigError(
            f"pipeline.address={address!r}: cannot join the Ray cluster at {target} "
            f"({_one_line(e)}); Ray's log: {log.name}"
        ) from None
    else:
        os.unlink(log.name)
    finally:
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _stderr_to(fd: int) -> Iterator[None]:
    """Send this process's file descriptor 2 (Ray's C++ and Python log lines) to `fd`."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _one_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[0] if lines else type(e).__name__


def resolve(address: str) -> str:
    """The host:port a join of `address` will connect to, checked within seconds: something
    answers there, it is a Ray GCS, and it accepts this process's credentials. Raises
    ConfigError with the reason otherwise.

    `auto` is what Ray would pick: RAY_ADDRESS, else the address Ray recorded at the last
    `ray start` on this machine. Where there is no record, Ray itself falls back to any Ray
    process it finds here: a private local Ray of another program (another graphpart run's,
    which listens on 127.0.0.1 only and ends with that run); graphpart refuses it instead."""
    if address.startswith("ray://"):
        check_reachable(address)
        return address.removeprefix("ray://")
    what = f"pipeline.address={address!r}"
    auto = address == "auto"
    if auto:
        address, origin = _auto_address()
        what += f" ({origin} says {address})"
    host, port = _split(address, what)
    from ray._private.services import resolve_ip_for_localhost

    target_host = resolve_ip_for_localhost(host)  # as Ray does: 127.0.0.1 -> this node's IP
    target = f"{target_host}:{port}"
    loopback_only = (
        f"the Ray at {host}:{port}{{who}} listens on the loopback address only, as a graphpart "
        "run's private local Ray does, and Ray joins through this machine's address"
    )
    try:
        socket.create_connection((target_host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as e:
        why = f"nothing answers at {target} ({e.strerror or e})"
        if target_host != host and _answers(host, port):
            who = _owner(f"{host}:{port}")
            why += "; " + loopback_only.format(who=f" ({who})" if who else "")
            why += ": it cannot be joined"
        raise ConfigError(
            f"{what}: {why}; is the cluster up (`ray start --head`)? For a local Ray of this "
            "run's own, leave the address empty"
        ) from None
    if target_host != host:  # both answer: the same program, or another one on the same port?
        here, there = _listener(host, port), _listener(target_host, port)
        if here is not None and there is not None and here != there:
            who = _owner(f"{host}:{port}")
            raise ConfigError(
                f"{what}: "
                + loopback_only.format(who=f" ({who})" if who else "")
                + f", where another program (pid {there}) listens on {target}: the Ray at "
                f"{host}:{port} cannot be joined. Start a cluster with `ray start --head`, or "
                "leave the address empty for a local Ray of this run's own"
            )
    _probe_gcs(target, auto=auto, what=what)
    return target


def _split(address: str, what: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{what}: expected auto, host:port or ray://host:port")
    return host.strip("[]"), port


def _listener(host: str, port: str) -> int | None:
    """The pid listening on host:port (TCP), or None where it cannot be told."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == int(port):
            if c.laddr.ip in (host, "0.0.0.0", "::"):
                return c.pid
    return None


def _answers(host: str, port: str) -> bool:
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _auto_address() -> tuple[str, str]:
    """What `auto` means on this machine, and where that came from; ConfigError if nothing
    joinable: no `ray start` record, only other programs' private local Rays."""
    from ray._private.services import find_gcs_addresses
    from ray._private.utils import get_ray_address_file, read_ray_address

    env = os.environ.get("RAY_ADDRESS", "")
    if env:
        return env, "RAY_ADDRESS"
    recorded = read_ray_address(None)
    if recorded:
        return recorded, f"Ray's record of the last `ray start` ({get_ray_address_file(None)})"
    found = sorted(find_gcs_addresses())
    if found:
        private = "; ".join(f"{a}, {_owner(a) or 'owner unknown'}" for a in found)
        raise ConfigError(
            "pipeline.address='auto': no cluster was started with `ray start` on this machine; "
            f"the Ray found here is a private local Ray of another program ({private}), "
            "which is not for joining and ends with its program. Start a cluster with `ray start "
            "--head`, or leave the address empty for a local Ray of this run's own"
        )
    raise ConfigError(
        "pipeline.address='auto': no Ray cluster on this machine (none was started with "
        "`ray start --head`); start one, give its host:port, or leave the address empty "
        "for a local Ray of this run's own"
    )


def _owner(gcs_address: str) -> str:
    """`started by a graphpart run (pid N)` for the program whose local Ray has this GCS
    address (the parent of its raylet), or '' when it cannot be told."""
    import psutil

    for p in psutil.process_iter(["cmdline", "ppid"]):
        cmd = p.info.get("cmdline") or []
        if cmd and cmd[0].endswith("raylet") and f"--gcs-address={gcs_address}" in " ".join(cmd):
            try:
                parent = psutil.Process(p.info["ppid"])
                pcmd = " ".join(parent.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return ""
            who = "a graphpart run" if "graphpart" in pcmd else os.path.basename(parent.name())
            return f"started by {who} (pid {parent.pid})"
    return ""


_PROBE = """
import json, sys
addr, auto = sys.argv[1], sys.argv[2] == "1"
try:
    if auto:  # as ray.init(address="auto"): a token on this machine turns token mode on
        from ray._private.authentication import authentication_token_setup as a
        a.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    from ray._raylet import GcsClient
    GcsClient(address=addr)
    print(json.dumps({"ok": True}))
except Exception as e:
    text = [x for x in str(e).splitlines() if x.strip()]
    print(json.dumps({"ok": False, "type": type(e).__name__, "message": text[0] if text else ""}))
"""


def _probe_gcs(target: str, *, auto: bool, what: str) -> None:
    """Ask the GCS at `target` for its cluster id, as ray.init will, once and within
    PROBE_TIMEOUT_S, in a subprocess: its C++ retries and log lines stay there."""
    try:
        r = subprocess.run(
            [sys.executable, "-c", _PROBE, target, "1" if auto else "0"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            env={**os.environ, "RAY_NUM_REDIS_GET_RETRIES": "1"},
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"{what}: something answers at {target}, but not as a Ray cluster's GCS within "
            f"{PROBE_TIMEOUT_S:g} s; is that the port `ray start --head` printed?"
        ) from None
    lines = r.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return  # the probe itself failed (an odd Ray build): let ray.init say what it says
    if out["ok"]:
        return
    message = out["message"].split(". ")[0]
    if "Authentication" in out["type"] or "auth" in message.lower():
        mode = os.environ.get("RAY_AUTH_MODE", "")
        if mode.lower() != "token" and not auto:
            fix = (
                "it uses token authentication: set RAY_AUTH_MODE=token in this command's "
                "environment (Ray turns it on by itself only for address 'auto'), with the "
                "cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
            )
        else:
            fix = (
                "the token this process sends is not the cluster's: use the one `ray start` "
                "made on the head (~/.ray/auth_token there), through RAY_AUTH_TOKEN or "
                "RAY_AUTH_TOKEN_PATH"
            )
        raise ConfigError(f"{what}: the Ray cluster at {target} refused to join ({message}); {fix}")
    raise ConfigError(f"{what}: cannot join the Ray cluster at {target} ({message})")


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
