"""A watchdog for a local Ray: once its driver ends, however, none of its processes live on.

`ray.shutdown()` stops the GCS, raylet, agents and workers when the driver ends normally or by
an exception. A driver that is killed (SIGKILL, the OOM killer) runs no shutdown: its Ray
processes are reparented and some (the dashboard and runtime-env agents, idle workers) were
seen to live on for minutes. `watch(pid)` starts a small process, in a session of its own so a
Ctrl-C to the driver's terminal does not reach it, that records the driver's descendants every
`period` seconds and, once the driver is gone and `grace` seconds have passed, kills those still
alive (each checked by its start time, so a reused pid is never hit), then exits.

    python -m graphpart.engines.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil


def watch(pid: int | None = None) -> subprocess.Popen:
    """Start the watchdog for `pid` (default: this process)."""
    return subprocess.Popen(
        [sys.executable, "-m", "graphpart.engines.reaper", str(pid or os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def reap(pid: int, period: float = 0.5, grace: float = 2.0) -> int:
    """Follow `pid`'s descendants until it exits; then kill those left. Returns how many."""
    try:
        driver = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    me = os.getpid()
    seen: dict[int, float] = {}  # pid -> create_time
    while True:
        try:
            if not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE:
                break
            for p in driver.children(recursive=True):
                if p.pid != me:
                    seen.setdefault(p.pid, p.create_time())
        except psutil.NoSuchProcess:
            break
        time.sleep(period)
    left = _still_alive(seen)
    if left:  # a normal end has stopped them already (ray.shutdown); else give Ray a moment
        time.sleep(grace)
        left = _still_alive(seen)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return len(left)


def _still_alive(seen: dict[int, float]) -> list[psutil.Process]:
    """The recorded processes still running (a zombie is not: its parent only has to reap it),
    each the very process recorded (same start time)."""
    out = []
    for p_id, created in seen.items():
        try:
            p = psutil.Process(p_id)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


if __name__ == "__main__":
    reap(int(sys.argv[1]))
