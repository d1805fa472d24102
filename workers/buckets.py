"""Gradient buckets for a data-parallel all-reduce, and the thread that reduces them while the
backward still runs (no Ray).

A stage's gradients are laid into its flat all-reduce buffer in the order the backward makes
them final (its weight-gradient calls run the layers last to first), and the buffer is cut
into buckets there: a bucket closes at the end of the first layer (weight and bias together)
that brings it to `bucket_bytes`, so the last layers' gradients form the first bucket, which
can be summed across the replicas while the earlier layers' weight gradients still compute,
as torch DDP's buckets are. `bucket_bytes` <= 0 makes a bucket of every layer.

A cut is moved down to a multiple of `world` x 64 bytes of the buffer (the channels' message
alignment, workers/channels.ALIGN): every bucket but the last then cuts into `world` equal
ring chunks of whole 64-byte lines, so all the buckets' messages take no more of a ring
channel than one all-reduce of the whole buffer does (the capacity the memory model counts),
and the few elements of a layer left past the cut go with the next bucket.

`Comm` is one thread per worker that runs a step's bucket all-reduces in order; a bucket is
handed to it only once its gradients are final, and the optimizer step waits for all of them
(`Comm.drain`), so the thread never touches a buffer the compute thread still writes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

ALIGN = 64  # workers/channels.ALIGN: where a channel lays each message
DEFAULT_BUCKET_BYTES = 1 << 20  # DDP's first bucket (its later ones: 25 MiB); see docs


@dataclass(frozen=True)
class Piece:
    """Elements [lo, hi) of parameter `name`'s gradient (flattened) at `at` in the buffer."""

    name: str
    lo: int
    hi: int
    at: int


@dataclass(frozen=True)
class Bucket:
    """Elements [start, stop) of the flat buffer, made of `pieces` of the parameters'
    gradients; final once every parameter it holds a piece of is."""

    index: int
    start: int
    stop: int
    pieces: tuple[Piece, ...]

    @property
    def params(self) -> frozenset[str]:
        return frozenset(p.name for p in self.pieces)


def plan_buckets(
    params: Sequence[tuple[str, int, int]],
    itemsize: int,
    world: int,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> tuple[Bucket, ...]:
    """The buckets of a buffer holding `params` ((name, elements, layer), in the order their
    gradients become final) end to end."""
    line = max(int(world), 1) * max(ALIGN // int(itemsize), 1)  # elements of world x 64 bytes
    offsets, at = [], 0
    for _, size, _ in params:
        offsets.append(at)
        at += int(size)
    total = at
    cuts, last = [0], 0
    for i, (_, size, layer) in enumerate(params):
        end = offsets[i] + int(size)
        layer_ends = i + 1 == len(params) or params[i + 1][2] != layer
        if not layer_ends or end == total:
            continue
        cut = end // line * line
        if cut > last and (end - last) * itemsize >= bucket_bytes:
            cuts.append(cut)
            last = cut
    cuts.append(total)
    out = []
    for b, (start, stop) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        pieces = []
        for (name, size, _), off in zip(params, offsets, strict=True):
            lo, hi = max(start, off), min(stop, off + int(size))
            if lo < hi:
                pieces.append(Piece(name, lo - off, hi - off, lo))
        out.append(Bucket(b, start, stop, tuple(pieces)))
    return tuple(out)


class Ready:
    """Which buckets a step's final gradients complete, handed out in bucket order (every
    replica must reduce them in the same order: a ring waits for its neighbour's bucket)."""

    def __init__(self, buckets: Sequence[Bucket]) -> None:
        self.buckets = tuple(buckets)
        self._missing = [set(b.params) for b in self.buckets]
        self._next = 0

    def final(self, name: str) -> list[Bucket]:
        """Parameter `name`'s gradient is final: the buckets that may start now."""
        for m in self._missing[self._next :]:
            m.discard(name)
        return self._take()

    def rest(self) -> list[Bucket]:
        """Every bucket not yet handed out (the step's backward is over)."""
        for m in self._missing:
            m.clear()
        return self._take()

    def _take(self) -> list[Bucket]:
        out = []
        while self._next < len(self.buckets) and not self._missing[self._next]:
            out.append(self.buckets[self._next])
            self._next += 1
        return out


@dataclass(frozen=True)
class Span:
    """One bucket's all-reduce on the communication thread: when it could start (handed over
    and the thread free) and when it ended (perf_counter seconds)."""

    start: float
    end: float


class Comm:
    """A worker's communication thread: runs jobs one at a time, in the order submitted. After
    a job fails, the step's later jobs are skipped; `drain` waits for the step's jobs and
    raises the first failure."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], float] | None] = (
            queue.SimpleQueue()
        )
        self._cv = threading.Condition()
        self._pending = 0
        self._error: BaseException | None = None
        self._free_at = 0.0  # when the thread finished its last job
        self.spans: list[Span] = []
        self._thread = threading.Thread(target=self._run, name="allreduce", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], object]) -> None:
        with self._cv:
            self._pending += 1
        self._jobs.put((job, time.perf_counter()))

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, handed = item
            with self._cv:
                start, skip = max(handed, self._free_at), self._error is not None
            try:
                if not skip:
                    job()
            except BaseException as e:  # noqa: BLE001 - handed to drain
                with self._cv:
                    self._error = self._error or e
            end = time.perf_counter()
            with self._cv:
                self._free_at = end
                if not skip:
                    self.spans.append(Span(start, end))
                self._pending -= 1
                self._cv.notify_all()

    def drain(self, timeout_s: float | None = None) -> list[Span]:
        """Wait until every submitted job ran; the spans of this round's jobs (and forget
        them); raise the first failure among them."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._pending == 0, timeout_s):
                raise TimeoutError(f"the all-reduce thread did not finish in {timeout_s} s")
            spans, err = self.spans, self._error
            self.spans, self._error = [], None
        if err is not None:
            raise err
        return spans

    def close(self) -> None:
        self._jobs.put(None)


def own_time(spans: Sequence[Span]) -> float:
    """The all-reduce's own time: each bucket's span from when it could start to its end."""
    return sum(s.end - s.start for s in spans)


def exposed_time(spans: Sequence[Span], compute_end: float) -> float:
    """What the step waited for after its last backward compute: from `compute_end` to the
    end of the last bucket (0 when every bucket was done before)."""
    return max(0.0, max((s.end for s in spans), default=compute_end) - compute_end)
