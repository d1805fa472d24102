"""Run one measurement in n fresh processes at once, each phase started in step."""

# The processes are `python -m` this module, not multiprocessing's: a spawned multiprocessing
# child imports the parent's main script again, which breaks (or hangs) a user's script that
# has no `if __name__ == "__main__"` guard. The barrier is the parent: each child writes a
# line on its protocol pipe and waits for a byte back, which the parent sends when every
# child has written.

from __future__ import annotations

import base64
import importlib
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


def at_once(n: int, target: str, args: Sequence[Any], timeout_s: float = 600.0) -> list[Any]:
    """`module:function(*args, sync=...)` run in `n` processes at once, in step: each call of
    `sync` (a `Barrier`, which also says the process's `rank` of `world`) in one process
    returns when every process has called it as often. Returns each process's result, by
    rank; a process that fails (or dies) fails the whole with its error."""
    if n < 1:
        raise ValueError(f"at_once: n={n}; want >= 1")
    logs = [tempfile.TemporaryFile() for _ in range(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        for log in logs
    ]
    deadline = time.monotonic() + timeout_s
    try:
        for rank, p in enumerate(procs):
            _put(p.stdin, base64.b64encode(pickle.dumps((target, tuple(args), rank, n))) + b"\n")
        while True:
            lines = [_line(p, deadline, n) for p in procs]
            kinds = {line[:1] for line in lines}
            if kinds == {_WAIT}:
                for p in procs:
                    _put(p.stdin, b"g")
                continue
            if kinds == {_DONE}:
                return [pickle.loads(base64.b64decode(line[2:])) for line in lines]
            raise RuntimeError(
                f"measuring in {n} processes at once failed: {_failure(lines, procs, logs)}"
            )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=timeout_s)
        for log in logs:
            log.close()


def _line(p: subprocess.Popen[bytes], deadline: float, n: int) -> bytes:
    """The process's next protocol line, or a TimeoutError past `deadline`."""
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise TimeoutError(f"measuring in {n} processes at once did not end in time")
    return p.stdout.readline()


def _put(pipe: IO[bytes] | None, data: bytes) -> None:
    assert pipe is not None
    pipe.write(data)
    pipe.flush()


def _failure(lines: list[bytes], procs: list[subprocess.Popen[bytes]], logs: list[Any]) -> str:
    """The first failed process's error: its own report, else the end of its stderr."""
    for line, p, log in zip(lines, procs, logs, strict=True):
        if line[:1] == _FAIL:
            return pickle.loads(base64.b64decode(line[2:]))
        if line[:1] not in (_WAIT, _DONE):
            p.wait(timeout=10)
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
            return f"a process exited with {p.returncode}: " + " | ".join(tail)
    return "the processes fell out of step"


class Barrier:
    """What an `at_once` process calls to wait until all have: process `rank` of `world`."""

    def __init__(self, rank: int, world: int, proto: IO[bytes], inp: IO[bytes]) -> None:
        self.rank, self.world = rank, world
        self._proto, self._inp = proto, inp

    def __call__(self) -> None:
        _put(self._proto, _WAIT + b"\n")
        if not self._inp.read(1):
            raise SystemExit(1)  # the parent gave up


def _child() -> None:
    """A process of `at_once`: the call's arguments on stdin, a line per sync and the result
    on the protocol pipe (this process's stdout, which prints no longer reach)."""
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    target, args, rank, world = pickle.loads(base64.b64decode(inp.readline()))
    try:
        module, name = target.split(":")
        sync = Barrier(rank, world, proto, inp)
        result = getattr(importlib.import_module(module), name)(*args, sync=sync)
        _put(proto, _DONE + b" " + base64.b64encode(pickle.dumps(result)) + b"\n")
    except Exception as e:
        _put(proto, _FAIL + b" " + base64.b64encode(pickle.dumps(f"{type(e).__name__}: {e}")))
        _put(proto, b"\n")


if __name__ == "__main__":
    _child()
