"""Joining a Ray cluster: its address resolved and probed within seconds, or one line why not."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from graphpart.errors import ConfigError

# Ray's count of GCS connection tries (about 1 s each) when a driver joins; default 20
RETRY_ENV = "RAY_gcs_server_port_wait_time_s"
REACH_TIMEOUT_S = 5.0  # a TCP connection to a cluster's GCS port
PROBE_TIMEOUT_S = 10.0  # a GCS that accepts connections answers a cluster id request
JOIN_TIMEOUT_S = 5.0  # Ray's own tries once the checks passed


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
