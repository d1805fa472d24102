"""A watchdog for a local Ray: once its driver ends, however, none of its processes live on.

`ray.shutdown()` stops the GCS, raylet, agents and workers when the driver ends normally or by
an exception. A driver that is killed (SIGKILL, the OOM killer) runs no shutdown: its Ray
processes are reparented and some (the dashboard and runtime-env agents, idle workers) were
seen to live on for minutes. `watch(pid)` starts a small process, in a session of its own so a
Ctrl-C to the driver's terminal does not reach it, that records the driver's descendants every
`period` seconds (`fast` during the first `fast_for` seconds, while Ray starts its processes) and,
once the driver is gone and `grace` seconds have passed, kills those still alive (each checked by
its start time, so a reused pid is never hit), removes the shared-memory channel files they held
(a killed process never removed its own), then exits.

A driver killed during start-up leaves processes the last look did not see: a worker or agent
the raylet started a moment before, orphaned when the raylet died with the driver. Three things
catch them: `watch` returns only once the watchdog has looked at the driver (so it is following
before Ray starts anything), it looks every 0.1 s during start-up, and after the driver is gone
it also takes the Ray processes of this user that carry the driver's Ray session: those with
`RAY_RAYLET_PID` of a raylet it saw, or a file open in that session's folder.

    python graphpart/engines/reaper.py DRIVER_PID   (or python -m graphpart.engines.reaper)
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time

import psutil

CHANNEL_PREFIX = "graphpart-"  # workers/channels.py names its files so
FIFO_SUFFIX, BUFFER_SUFFIX = ".fifo", ".buf"
READY = b"r"  # the watchdog's word to `watch`: it has looked at the driver
SESSION = re.compile(r"(/\S*?/session_\d{4}-\d\d-\d\d_[\d\-_]+)/")  # a Ray session folder


def watch(pid: int | None = None, ready_s: float = 10.0) -> subprocess.Popen:
    """Start the watchdog for `pid` (default: this process); return once it follows `pid`
    (at most `ready_s` seconds: a watchdog that could not start does not stop the run).

    It runs as a script, not `-m graphpart...`, so it imports psutil and nothing else of
    ours: it starts in about 0.1 s instead of 1-3 s, and a driver killed meanwhile is
    followed all the same."""
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(pid or os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdout is not None
    if select.select([proc.stdout], [], [], ready_s)[0]:
        proc.stdout.read(len(READY))
    proc.stdout.close()
    return proc


def reap(
    pid: int,
    period: float = 0.5,
    grace: float = 2.0,
    fast: float = 0.1,
    fast_for: float = 30.0,
    ready: int | None = None,
) -> int:
    """Follow `pid`'s descendants until it exits; then kill those left, and the orphans of its
    Ray session. Returns how many. Writes READY to the file descriptor `ready` (then closes
    it) once it has looked at `pid`."""
    me = os.getpid()
    seen: dict[int, float] = {}  # pid -> create_time
    raylets: dict[int, float] = {}  # our raylets: their workers carry RAY_RAYLET_PID
    sessions: set[str] = set()  # our Ray session folders (from our processes' command lines)
    files: set[str] = set()  # shared-memory channel files our processes hold
    try:
        driver = psutil.Process(pid)
        born = driver.create_time()
    except psutil.NoSuchProcess:
        _tell(ready)
        return 0
    start, tick = time.monotonic(), 0
    while True:
        try:
            if not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE:
                break
            for p in [driver, *driver.children(recursive=True)]:
                if p.pid == me or p.pid in seen:
                    continue
                seen[p.pid] = p.create_time()
                _learn(p, raylets, sessions)
            if tick % max(1, round(period / fast)) == 0:  # the fd tables: at the slow pace
                for p_id in list(seen):
                    files |= _channel_files(p_id, maps=False)
        except psutil.NoSuchProcess:
            break
        if tick == 0:
            _tell(ready)
        tick += 1
        time.sleep(fast if time.monotonic() - start < fast_for else period)
    left = _still_alive(seen)
    if left or raylets or sessions:  # a normal end has stopped them already (ray.shutdown)
        time.sleep(grace)  # else give Ray a moment
    killed: set[int] = set()
    for _ in range(3):  # what was starting as we killed: once more, then done
        left = [p for p in _ours(seen, raylets, sessions, born) if p.pid not in killed]
        if not left:
            break
        for p in left:  # what they hold now counts too (the last scan may predate it)
            files |= _channel_files(p.pid)
        for p in left:
            try:
                p.kill()
                killed.add(p.pid)
            except psutil.NoSuchProcess:
                pass
    for path in files:  # a killed driver or stage never removed its channels
        try:
            os.unlink(path)
        except OSError:
            pass
    return len(killed)


def _tell(fd: int | None) -> None:
    if fd is not None:
        try:
            os.write(fd, READY)
            os.close(fd)
        except OSError:
            pass


def _learn(p: psutil.Process, raylets: dict[int, float], sessions: set[str]) -> None:
    """Note a raylet among our processes, and the Ray session folder a command line names."""
    try:
        cmd = p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return
    if cmd and os.path.basename(cmd[0]) == "raylet":
        raylets[p.pid] = p.create_time()
    for m in SESSION.finditer(" ".join(cmd)):
        sessions.add(m.group(1))


def _ours(
    seen: dict[int, float], raylets: dict[int, float], sessions: set[str], born: float
) -> list[psutil.Process]:
    """The processes to kill: those recorded and still alive, their descendants, and this
    user's Ray processes that belong to our Ray session but were never recorded (started
    after the last look, orphaned when our raylet died): a worker with RAY_RAYLET_PID of one
    of our raylets, or a Ray process with a file open in our session folder."""
    out = {p.pid: p for p in _still_alive(seen)}
    for p in list(out.values()):
        try:
            out.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    if not raylets and not sessions:
        return list(out.values())
    me, uid = os.getpid(), os.getuid()
    for p in psutil.process_iter(["uids", "create_time"]):
        try:
            if p.pid in out or p.pid == me or p.info["uids"].real != uid:
                continue
            if p.info["create_time"] < born:
                continue
            if _in_session(p, raylets, sessions):
                out[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            continue
    return [p for p in out.values() if _alive(p)]


def _in_session(p: psutil.Process, raylets: dict[int, float], sessions: set[str]) -> bool:
    """Whether `p` is a Ray process of our session (see `_ours`)."""
    try:
        env = p.environ()
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return False
    raylet = env.get("RAY_RAYLET_PID", "")
    if raylet.isdigit() and int(raylet) in raylets and p.create_time() >= raylets[int(raylet)]:
        return True
    if not (cmd.startswith("ray::") or "/ray/" in cmd):  # only Ray's own, never a `tail -f`
        return False
    try:
        for fd in os.listdir(f"/proc/{p.pid}/fd"):
            target = os.readlink(f"/proc/{p.pid}/fd/{fd}")
            if any(target.startswith(s + "/") for s in sessions):
                return True
    except OSError:
        pass
    return False


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _channel_files(pid: int, maps: bool = True) -> set[str]:
    """The graphpart-* shared-memory files `pid` has open or mapped (Linux /proc).

    A channel keeps its FIFO open and its buffer only mapped; the buffer is the FIFO's sibling,
    so the polling loop reads only the (short) fd table and leaves the maps, thousands of lines
    in a Ray worker, to the final sweep: that cut the watchdog from 0.041 to 0.013 cores
    during a training run."""
    out: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if os.path.basename(target).startswith(CHANNEL_PREFIX):
                out.add(target)
                if target.endswith(FIFO_SUFFIX):
                    out.add(target[: -len(FIFO_SUFFIX)] + BUFFER_SUFFIX)
        if not maps:
            return out
        with open(f"/proc/{pid}/maps") as maps_file:
            for line in maps_file:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if os.path.basename(path).startswith(CHANNEL_PREFIX):
                    out.add(path)
    except OSError:
        pass
    return out


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
    reap(int(sys.argv[1]), ready=sys.stdout.fileno())
