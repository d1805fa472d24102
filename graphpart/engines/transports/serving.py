"""The driver's side of workers/serve.py: a step's calls to workers on this node written to
their FIFOs instead of made through Ray, and their answers read back.

`start` makes two FIFOs a worker (in /dev/shm: `graphpart-serve-...`) and starts each
worker's loop with one Ray call (`serve`), which runs until `stop` sends it None. While the
loops run, the workers take no other Ray call on their main thread (their inbox thread still
answers), so the transport stops them before any other call (`RayActors.quiesce`) and starts
them again at the next step. A worker that dies ends its loop's Ray call: `dead` names it.
"""

from __future__ import annotations

import contextlib
import os
import select
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from workers.channels import shm_dir
from workers.serve import read_frame, write_frame


class Serving:
    """The FIFOs to and from `actors` and their serve loops."""

    stop_wait_s = 10.0  # how long `stop` waits for the loops to return

    def __init__(self, actors: Sequence[Any]) -> None:
        self.actors = list(actors)
        self.refs: list[Any] = []  # the loops' Ray calls; [] when not running
        self.control: list[int] = []  # the driver's end of each worker's control FIFO
        self.reply: list[int] = []  # ... and of its reply FIFO
        self.paths: list[str] = []

    @property
    def running(self) -> bool:
        return bool(self.refs)

    def start(self) -> None:
        """Make the FIFOs and start every worker's loop (one Ray call each)."""
        if self.running:
            return
        base = os.path.join(shm_dir(), f"graphpart-serve-{uuid.uuid4().hex[:12]}")
        for k in range(len(self.actors)):
            for end in ("ctl", "rep"):
                path = f"{base}-{k}.{end}"
                os.mkfifo(path, 0o600)
                self.paths.append(path)
                # read and write: opening never blocks, and the worker's open does not either
                fd = os.open(path, os.O_RDWR)
                (self.control if end == "ctl" else self.reply).append(fd)
        self.refs = [
            a.serve.remote(self.paths[2 * k], self.paths[2 * k + 1])
            for k, a in enumerate(self.actors)
        ]

    def send(self, k: int, method: str, args: tuple[Any, ...]) -> None:
        """Ask worker k to run `method(*args)`."""
        write_frame(self.control[k], (method, args))

    def ready(self, workers: Iterable[int], timeout_s: float) -> list[int]:
        """Which of `workers` have an answer waiting (within `timeout_s`)."""
        fds = {self.reply[k]: k for k in workers}
        readable, _, _ = select.select(list(fds), [], [], max(0.0, timeout_s))
        return [fds[fd] for fd in readable]

    def receive(self, k: int) -> tuple[str, Any]:
        """Worker k's next answer: ("ok", result) or ("error", message)."""
        status, value = read_frame(self.reply[k])
        return str(status), value

    def dead(self) -> list[tuple[int, BaseException]]:
        """The workers whose loop ended (their process died, or the loop failed), with why."""
        import ray

        done, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        out = []
        for r in done:
            k = self.refs.index(r)
            try:
                ray.get(r)
                out.append((k, RuntimeError(f"stage {k}'s serve loop ended")))
            except Exception as e:  # noqa: BLE001 - the caller reports it
                out.append((k, e))
        return out

    def stop(self) -> None:
        """End the loops (a None frame each), wait for them, and remove the FIFOs; a loop
        that does not end in `stop_wait_s` (a wedged worker) is left to the transport."""
        import ray

        if not self.running:
            return
        for fd in self.control:
            with contextlib.suppress(OSError):
                write_frame(fd, None)
        with contextlib.suppress(Exception):
            ray.wait(self.refs, num_returns=len(self.refs), timeout=self.stop_wait_s)
        self.close()

    def close(self) -> None:
        """Forget the loops and remove the FIFOs (closing the driver's ends: a loop still
        reading sees the end of its input and returns)."""
        self.refs = []
        for fd in (*self.control, *self.reply):
            with contextlib.suppress(OSError):
                os.close(fd)
        for path in self.paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.control, self.reply, self.paths = [], [], []
