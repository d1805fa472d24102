"""A worker's calls driven through two FIFOs instead of one Ray call each: the driver writes a
frame (method, arguments), the worker runs it and writes a frame back (no Ray, no threads).

Why: on a machine with as many cores as workers, a Ray actor call costs the driver about
0.8 ms of CPU and the worker about as much (argument serialisation, the task's bookkeeping),
a step's one call per worker included: taken from the cores that run the stages. A worker
serving its FIFOs (`serve`, one long Ray call) gets each step as a few hundred bytes written to
a pipe, and answers the same way; Ray still starts, places and supervises it, and carries
every other call once the driver has stopped the loop (a None frame).

A frame is a little-endian 8-byte length and that many bytes of pickle. A reply is ("ok",
result) or ("error", message), the message as the driver would have read it from Ray; a
failed call does not end the loop.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

LENGTH = struct.Struct("<q")


def write_frame(fd: int, obj: Any) -> None:
    """Write `obj` as one frame (all of it, however many writes the pipe takes)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def read_frame(fd: int) -> Any:
    """The next frame's object (blocks until all of it has arrived); EOFError if the writer
    closed the pipe."""
    (n,) = LENGTH.unpack(_read_exactly(fd, LENGTH.size))
    return pickle.loads(_read_exactly(fd, n))


def _read_exactly(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        b = os.read(fd, left)
        if not b:
            raise EOFError("the other end of the pipe closed")
        parts.append(b)
        left -= len(b)
    return b"".join(parts)


def message(e: BaseException) -> str:
    """A failure as the driver reports it through Ray (graphpart.engines.cluster.first_line
    of the call's error): a "RuntimeError: stage ..." line within it, else its own text."""
    text = str(e)
    for line in text.splitlines():
        if line.startswith("RuntimeError: stage "):
            return line[len("RuntimeError: ") :]
    return text


def serve(target: Any, control: str, reply: str) -> int:
    """Run the (method, args) frames read from the FIFO `control` on `target` until a None
    frame, answering each on the FIFO `reply`; returns how many it ran. The driver keeps both
    FIFOs open (read and write), so opening them here does not block."""
    ctl = os.open(control, os.O_RDONLY)
    out = os.open(reply, os.O_WRONLY)
    served = 0
    try:
        while True:
            frame = read_frame(ctl)
            if frame is None:
                return served
            method, args = frame
            try:
                answer = ("ok", getattr(target, method)(*args))
            except Exception as e:  # noqa: BLE001 - reported to the driver, the loop goes on
                answer = ("error", message(e))
            write_frame(out, answer)
            served += 1
    finally:
        os.close(ctl)
        os.close(out)
