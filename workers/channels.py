"""Shared-memory channels between two stage processes on one node: a preallocated buffer for
the tensors, and a FIFO that says what arrived (no Ray, no busy-waiting).

A channel carries one direction between two neighbours (forward activations, or backward
gradients). The reader creates it (`Channel.create`), the writer attaches (`Channel.attach`).
Within a step the writer lays its tensors one after another in the buffer and then writes a
32-byte record (step, kind, micro-batch, rows, columns, dtype, offset) to the FIFO, one
atomic write; the reader waits for records with select() (it sleeps, it does not spin) and
hands out views of the buffer. A step's tensors are all taken before the next step starts
(the driver waits for every stage), so the writer starts each step at offset 0.
"""

from __future__ import annotations

import mmap
import os
import select
import struct
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workers.push import Inbox, Key

RECORD = struct.Struct("<qiiiiii")  # step, kind, mb, rows, cols, dtype code, offset / 64
KINDS = ("F", "B")  # a key's kind: "F" or "B", or with the sending virtual stage ("F3", "B4")


def kind_code(kind: str) -> int:
    """A key's kind as the record's int: "F" 0, "B" 1; "F<s>" 2 + 2s, "B<s>" 3 + 2s."""
    base = KINDS.index(kind[0])
    return base if len(kind) == 1 else base + 2 + 2 * int(kind[1:])


def code_kind(code: int) -> str:
    """The kind `kind_code` wrote."""
    return KINDS[code % 2] + ("" if code < 2 else str((code - 2) // 2))


DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
ALIGN = 64


def shm_dir() -> str:
    """Where channel files live: /dev/shm (memory) where it exists, else the temp folder."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


@dataclass(frozen=True)
class ChannelName:
    """The two files of one channel: its data buffer and its FIFO."""

    data: str
    fifo: str
    capacity: int  # bytes of the data buffer

    @classmethod
    def new(cls, tag: str, capacity: int) -> ChannelName:
        base = os.path.join(shm_dir(), f"graphpart-{tag}")
        return cls(base + ".buf", base + ".fifo", int(capacity))


class Channel:
    """One end of a channel: `send` on the writer's, `receive` on the reader's."""

    def __init__(self, name: ChannelName, *, owner: bool) -> None:
        self.name, self.owner = name, owner
        fd = os.open(name.data, os.O_RDWR)
        try:
            self.buf = mmap.mmap(fd, max(name.capacity, 1))
        finally:
            os.close(fd)
        # O_RDWR: opening never blocks for the other end, and a read never sees end-of-file
        self.fd = os.open(name.fifo, os.O_RDWR | os.O_NONBLOCK)
        self._step, self._offset = -1, 0
        self._pending = b""

    @classmethod
    def create(cls, name: ChannelName) -> Channel:
        """Make the files (the reader's side) and open them."""
        fd = os.open(name.data, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, max(name.capacity, 1))
        finally:
            os.close(fd)
        os.mkfifo(name.fifo, 0o600)
        return cls(name, owner=True)

    @classmethod
    def attach(cls, name: ChannelName) -> Channel:
        return cls(name, owner=False)

    # -- the writer -----------------------------------------------------------------------------
    def send(self, key: Key, a: np.ndarray) -> None:
        """Copy `a` (2-D, float32 or float64) into the buffer and announce it."""
        step, kind, mb = key
        if step != self._step:
            self._step, self._offset = step, 0
        a = np.asarray(a)
        dt = DTYPES.index(a.dtype)
        rows, cols = a.shape
        end = self._offset + a.nbytes
        if end > self.name.capacity:
            raise ValueError(
                f"channel {os.path.basename(self.name.data)}: step {step} sends "
                f"{end} bytes, more than its {self.name.capacity}"
            )
        view = np.frombuffer(self.buf, a.dtype, rows * cols, self._offset).reshape(rows, cols)
        np.copyto(view, a)
        record = RECORD.pack(step, kind_code(kind), mb, rows, cols, dt, self._offset // ALIGN)
        os.write(self.fd, record)
        self._offset = -(-end // ALIGN) * ALIGN

    # -- the reader -----------------------------------------------------------------------------
    def receive(self) -> list[tuple[Key, np.ndarray]]:
        """Every item announced since the last call (views of the buffer); [] if none."""
        try:
            data = self._pending + os.read(self.fd, RECORD.size * 256)
        except BlockingIOError:
            return []
        n = len(data) // RECORD.size * RECORD.size
        self._pending = data[n:]
        out = []
        for i in range(0, n, RECORD.size):
            step, kind, mb, rows, cols, dt, off = RECORD.unpack_from(data, i)
            view = np.frombuffer(self.buf, DTYPES[dt], rows * cols, off * ALIGN)
            out.append(((step, code_kind(kind), mb), view.reshape(rows, cols)))
        return out

    def close(self) -> None:
        os.close(self.fd)
        try:
            self.buf.close()
        except BufferError:  # a view is still alive somewhere: the mapping goes with it
            pass
        if self.owner:
            unlink(self.name)


def unlink(name: ChannelName) -> None:
    for path in (name.data, name.fifo):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def wait_readable(
    channels: Sequence[Channel], wake_fd: int, timeout_s: float
) -> tuple[list[Channel], bool]:
    """Sleep until a channel has records or `wake_fd` is written (or the timeout): which
    channels are readable, and whether the wake pipe fired."""
    fds = [c.fd for c in channels] + [wake_fd]
    ready, _, _ = select.select(fds, [], [], max(0.0, timeout_s))
    return [c for c in channels if c.fd in ready], wake_fd in ready


class ChannelInbox(Inbox):
    """An Inbox that also collects what its channels announce: `take` sleeps in select() on
    the channels' FIFOs and a wake pipe (which `put` and `fail` write), never spinning."""

    # Seconds `take` polls the FIFOs before it sleeps in select(). A sleeping process (a vCPU
    # that halted) takes 0.1-0.3 ms to wake, more than the 1 MiB copy, and comes back to cold
    # caches; a tensor that arrives within the poll is taken at once. Bounded, so a long wait
    # still sleeps. SPIN_OWN_CORE where each stage of the node has a core of its own (the
    # transport says so): a K=2 pipeline at M=4 ran 5-10% more samples/s with 5 ms than 0.2.
    SPIN_SHARED_CORE = 2e-4
    SPIN_OWN_CORE = 5e-3

    def __init__(self, channels: Sequence[Channel], spin_s: float = SPIN_SHARED_CORE) -> None:
        super().__init__()
        self.channels = list(channels)
        self.spin_s = spin_s
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._reading = threading.Lock()  # one reader of the channels at a time

    def put(self, key: Key, value: object) -> None:
        super().put(key, value)
        os.write(self._wake_w, b"p")

    def fail(self, step: int, why: str) -> None:
        super().fail(step, why)
        os.write(self._wake_w, b"f")

    def has(self, key: Key) -> bool:
        self._collect(self.channels)
        return super().has(key)

    def take(self, key: Key, timeout_s: float) -> object:
        """Wait for `key`'s value, polling the channels `spin_s` first."""
        deadline = time.monotonic() + timeout_s
        spin_until = time.perf_counter() + self.spin_s
        while time.perf_counter() < spin_until:  # poll briefly before sleeping: see spin_s
            self._collect(self.channels)
            try:
                return super().take(key, 0.0)
            except TimeoutError:
                pass
        while True:
            try:
                return super().take(key, 0.0)
            except TimeoutError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no {key[1]} tensor of micro-batch {key[2]} arrived in {timeout_s:.0f} s"
                    ) from None
            ready, woke = wait_readable(self.channels, self._wake_r, min(left, 1.0))
            if woke:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            self._collect(ready)

    def _collect(self, channels: Sequence[Channel]) -> None:
        """File what `channels` announced under the senders' keys."""
        with self._reading:
            for c in channels:
                for k, v in c.receive():
                    Inbox.put(self, k, v)

    def close(self) -> None:
        for c in self.channels:
            c.close()
        self.channels = []
        os.close(self._wake_r)
        os.close(self._wake_w)
