"""Run one measurement in n fresh processes at once, each phase started in step."""

# The processes are fresh interpreters (`python -c _BOOT`), not multiprocessing's: a spawned
# multiprocessing child imports the parent's main script again, which breaks (or hangs) a
# user's script that has no `if __name__ == "__main__"` guard. Each child first moves its
# stdout aside for the protocol (so nothing an import prints can reach it), then takes the
# parent's sys.path (not the working directory's packages), then imports its target. The
# barrier is the parent: each child writes a line and waits for a byte back, which the parent
# sends when every child has written. Closing a child's stdin makes its next wait exit, so
# its `finally` blocks (shared-memory files) run.

from __future__ import annotations

import base64
import importlib
import json
import os
import pickle
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import IO, Any

_WAIT, _DONE, _FAIL = b"w", b"r", b"x"
_TAG = b"graphpart-at-once "  # every protocol line starts so; any other line is a stray print
_BOOT = (
    "import os, sys, json; fd = os.dup(1); os.dup2(2, 1); sys.path[:] = json.loads(sys.argv[1]); "
    "from graphpart.tools.compare.at_once import _child; _child(fd)"
)


def at_once(n: int, target: str, args: Sequence[Any], timeout_s: float = 600.0) -> list[Any]:
    """`module:function(*args, sync=...)` run in `n` processes at once, in step: each call of
    `sync` (a `Barrier`, which also says the process's `rank` of `world`) in one process
    returns when every process has called it as often. Returns each process's result, by
    rank; a process that fails (or dies) fails the whole with its error, and so does a phase
    (from one release of the barrier to the next) longer than `timeout_s`."""
    if n < 1:
        raise ValueError(f"at_once: n={n}; want >= 1")
    logs = [tempfile.TemporaryFile() for _ in range(n)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for log in logs:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _BOOT, json.dumps(sys.path)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
            )
        for rank, p in enumerate(procs):
            head = pickle.dumps((target, tuple(args), rank, n))
            _send(procs, logs, p, base64.b64encode(head) + b"\n")
        while True:
            deadline = time.monotonic() + timeout_s
            lines = [_line(p, deadline, n) for p in procs]
            kinds = {_kind(line) for line in lines}
            if kinds == {_WAIT}:
                for p in procs:
                    _send(procs, logs, p, b"g")
                continue
            if kinds == {_DONE}:
                return [pickle.loads(base64.b64decode(line[len(_TAG) + 2 :])) for line in lines]
            raise RuntimeError(
                f"measuring in {n} processes at once failed: {_failure(lines, procs, logs)}"
            )
    finally:
        _stop(procs)
        for log in logs:
            log.close()


def _kind(line: bytes) -> bytes:
    """A protocol line's kind (_WAIT, _DONE, _FAIL); b"" for any other line."""
    return line[len(_TAG) : len(_TAG) + 1] if line.startswith(_TAG) else b""


def _line(p: subprocess.Popen[bytes], deadline: float, n: int) -> bytes:
    """The process's next protocol line, or a TimeoutError past `deadline`."""
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise TimeoutError(f"measuring in {n} processes at once: a phase did not end in time")
    return p.stdout.readline()


def _send(
    procs: list[subprocess.Popen[bytes]],
    logs: list[IO[bytes]],
    p: subprocess.Popen[bytes],
    data: bytes,
) -> None:
    """`data` to a child; one that died first fails the whole, named."""
    try:
        _put(p.stdin, data)
    except (BrokenPipeError, OSError):
        lines = [b"" if q is p else _TAG + _WAIT for q in procs]
        raise RuntimeError(
            f"measuring in {len(procs)} processes at once failed: {_failure(lines, procs, logs)}"
        ) from None


def _put(pipe: IO[bytes] | None, data: bytes) -> None:
    assert pipe is not None
    pipe.write(data)
    pipe.flush()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """End the children: their stdin closed (a waiting child exits through its `finally`
    blocks), then terminated, then killed; their pipes closed."""
    for p in procs:
        if p.stdin is not None:
            try:
                p.stdin.close()
            except OSError:
                pass
    for step in (lambda p: None, lambda p: p.terminate(), lambda p: p.kill()):
        for p in procs:
            if p.poll() is None:
                step(p)
        end = time.monotonic() + 2.0
        for p in procs:
            try:
                p.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for p in procs:
        if p.stdout is not None:
            p.stdout.close()


def _failure(
    lines: list[bytes], procs: list[subprocess.Popen[bytes]], logs: list[IO[bytes]]
) -> str:
    """Why the processes fell out of step: a dead one's exit code and stderr first, then a
    line that is not the protocol's (a stray print), then a process's own error report."""
    for line, p, log in zip(lines, procs, logs, strict=True):
        if not line:  # end of file: the process is gone
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
            return f"a process exited with {p.returncode}: " + " | ".join(tail)
    for line in lines:
        if not line.startswith(_TAG):
            return f"a process wrote {line[:200]!r} where the protocol was expected"
    for line in lines:
        if _kind(line) == _FAIL:
            return pickle.loads(base64.b64decode(line[len(_TAG) + 2 :]))
    return "the processes fell out of step"


class Barrier:
    """What an `at_once` process calls to wait until all have: process `rank` of `world`."""

    def __init__(self, rank: int, world: int, proto: IO[bytes], inp: IO[bytes]) -> None:
        self.rank, self.world = rank, world
        self._proto, self._inp = proto, inp

    def __call__(self) -> None:
        _put(self._proto, _TAG + _WAIT + b"\n")
        if not self._inp.read(1):
            raise SystemExit(1)  # the parent gave up


def _child(fd: int) -> None:
    """A process of `at_once`: the call's arguments on stdin, a line per sync and the result
    on the protocol pipe `fd` (this process's stdout, which prints no longer reach)."""
    proto = os.fdopen(fd, "wb")
    inp = sys.stdin.buffer
    target, args, rank, world = pickle.loads(base64.b64decode(inp.readline()))
    try:
        module, name = target.split(":")
        sync = Barrier(rank, world, proto, inp)
        result = getattr(importlib.import_module(module), name)(*args, sync=sync)
        _put(proto, _TAG + _DONE + b" " + base64.b64encode(pickle.dumps(result)) + b"\n")
    except Exception as e:
        report = pickle.dumps(f"{type(e).__name__}: {e}")
        _put(proto, _TAG + _FAIL + b" " + base64.b64encode(report) + b"\n")
