"""Gradient buckets for a data-parallel all-reduce, reduced while the backward still runs (no
Ray, no thread).

A stage's gradients are laid into its flat all-reduce buffer in the order the backward makes
them final (its weight-gradient calls run the layers last to first), and the buffer is cut
into buckets there: a bucket closes at the end of the first layer (weight and bias together)
that brings it to `bucket_bytes`, so the last layers' gradients form the first bucket, which
can be summed across the replicas while the earlier layers' weight gradients still compute,
as torch DDP's buckets are. `bucket_bytes` <= 0 makes a bucket of every layer. A gradient
computed in row blocks (a replica's first layer's, graphpart/ir/split.py) may also close a
bucket at each block's end, so its first blocks are summed while the next computes.

A cut is moved down to a multiple of `world` x 64 bytes of the buffer (the channels' message
alignment, workers/channels.ALIGN): every bucket but the last then cuts into `world` equal
ring chunks of whole 64-byte lines, so all the buckets' messages take no more of a ring
channel than one all-reduce of the whole buffer does (the capacity the memory model counts),
and the few elements of a layer left past the cut go with the next bucket.

`Progress` runs a step's bucket all-reduces in order on the compute thread, between its
kernel calls; a bucket is handed to it only once its gradients are final, and the optimizer
step waits for all of them (`Progress.drain`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from workers.push import Key
from workers.stats import ReduceMark

Steps = Generator[Key, np.ndarray, int]  # a bucket's ring (workers/ring.ring_steps)

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
    gradients; final once every piece's elements are (Ready)."""

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
    block_ends: Mapping[str, Sequence[int]] | None = None,
    strides: Sequence[int] | None = None,
) -> tuple[Bucket, ...]:
    """The buckets of a buffer holding `params` ((name, elements, layer), in the order their
    gradients become final) end to end, each `strides` elements after the one before (None:
    its elements; Program.grad_spans: aligned, with zeros between, which the buckets cover).
    A gradient written in row blocks (`block_ends`: its elements at each block's end but the
    last, workers/finals.py) may also close a bucket at each block's end, as at a layer's."""
    line = max(int(world), 1) * max(ALIGN // int(itemsize), 1)  # elements of world x 64 bytes
    blocks = block_ends or {}
    steps = [int(p[1]) for p in params] if strides is None else [int(s) for s in strides]
    offsets, at = [], 0
    for step in steps:
        offsets.append(at)
        at += step
    total = at
    ends = []  # where a bucket may close: inside a gradient written in blocks, a layer's end
    for i, (name, _, layer) in enumerate(params):
        ends += [offsets[i] + int(e) for e in blocks.get(name, ())]
        if i + 1 == len(params) or params[i + 1][2] != layer:
            ends.append(offsets[i] + steps[i])
    cuts, last = [0], 0
    for end in ends:
        if end == total:
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
        self._missing = [set(b.pieces) for b in self.buckets]
        self._next = 0

    def final(self, name: str, upto: int | None = None) -> list[Bucket]:
        """Parameter `name`'s gradient is final (in its first `upto` elements, flattened;
        None: all of it): the buckets that may start now."""
        for m in self._missing[self._next :]:
            m.difference_update([p for p in m if p.name == name and (upto is None or p.hi <= upto)])
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
    """One bucket's all-reduce: when it could start (handed over, and the bucket before it
    done) and when it ended (perf_counter seconds)."""

    start: float
    end: float


@dataclass(frozen=True)
class Round:
    """A step's buckets, all-reduced: their spans, and the bytes sent and received."""

    spans: list[Span]
    sent: int
    received: int


class Progress:
    """A step's bucket all-reduces, run on the compute thread itself: each bucket's ring
    (workers/ring.ring_steps) goes as far as its left neighbour's messages have come whenever
    `poll` is called (between the backward's kernel calls), and `drain` finishes them. No
    thread: on a core a replica, a second thread took the core from the backward and the
    all-reduce took twice as long (docs/benchmarks.md); polled, the only wait the overlap
    hides is the one for the other replicas, and their messages are summed at once.

    Buckets run one at a time, in the order submitted (every replica's ring takes them in the
    same order; a bucket's messages follow the earlier ones' in its channel). After a failure
    the step's later buckets are skipped; `drain` raises the first failure.
    """

    def __init__(self, arrived: Callable[[Key], bool], take: Callable[[Key], np.ndarray]) -> None:
        self._arrived, self._take = arrived, take
        self._queue: deque[tuple[Callable[[], Steps], float]] = deque()
        self._run: Steps | None = None
        self._key: Key | None = None
        self._start = self._free_at = 0.0
        self._error: BaseException | None = None
        self.spans: list[Span] = []
        self._sent = self._received = 0

    def submit(self, ring: Callable[[], Steps]) -> None:
        """Queue a bucket (`ring()` makes its steps, sending as far as it can), and poll."""
        self._queue.append((ring, time.perf_counter()))
        self.poll()

    def poll(self) -> None:
        """Advance the buckets as far as what has arrived allows, without waiting."""
        self._advance(wait=False)

    def drain(self) -> Round:
        """Finish every bucket (waiting for the neighbours' messages); this step's round (and
        forget it, so the next step starts from nothing); raise the step's first failure."""
        self._advance(wait=True)
        done, err = Round(self.spans, self._sent, self._received), self._error
        self.abandon()
        if err is not None:
            raise err
        return done

    def abandon(self) -> None:
        """A failed step: drop its buckets unfinished."""
        if self._run is not None:
            self._run.close()
        self._run, self._key, self._queue, self.spans, self._error = None, None, deque(), [], None
        self._sent = self._received = 0

    def _advance(self, wait: bool) -> None:
        while self._error is None:
            if self._run is None:
                if not self._queue:
                    return
                ring, handed = self._queue.popleft()
                self._start = max(handed, self._free_at)
                self._guard(lambda ring=ring: self._begin(ring()))
            elif not self._guard(lambda: self._next(wait)):
                return

    def _next(self, wait: bool) -> bool:
        """Give the bucket under way its next message if it has come (`wait`: wait for it);
        whether it did."""
        key = self._key
        assert key is not None
        if not wait and not self._arrived(key):
            return False
        self._resume(self._take(key))
        return True

    def _guard(self, fn: Callable[[], bool | None]) -> bool:
        """Run `fn`; a failure is kept for `drain` and ends the step's buckets. False only
        where `fn` said it could not go on."""
        try:
            return fn() is not False
        except Exception as e:  # noqa: BLE001 - raised by drain
            self._error = e
            if self._run is not None:
                self._run.close()
            self._run, self._key = None, None
            return True

    def _begin(self, run: Steps) -> None:
        self._run = run
        self._step(None)

    def _resume(self, a: np.ndarray) -> None:
        self._received += a.nbytes
        self._step(a)

    def _step(self, value: np.ndarray | None) -> None:
        assert self._run is not None
        try:
            self._key = self._run.send(value)  # type: ignore[arg-type]
        except StopIteration as end:
            self._sent += int(end.value or 0)
            self._run, self._key = None, None
            self._free_at = time.perf_counter()
            self.spans.append(Span(self._start, self._free_at))


def own_time(spans: Sequence[Span]) -> float:
    """The all-reduce's own time: each bucket's span from when it could start to its end."""
    return sum(s.end - s.start for s in spans)


def exposed_time(spans: Sequence[Span], compute_end: float) -> float:
    """What the step waited for after its last backward compute: from `compute_end` to the
    end of the last bucket (0 when every bucket was done before)."""
    return max(0.0, max((s.end for s in spans), default=compute_end) - compute_end)


@dataclass(frozen=True)
class CriticalPath:
    """Steps of data parallelism on the replicas' clocks side by side (seconds, summed over the
    steps): `exposed`, the communication after the last replica's backward compute ended,
    which no replica could hide; `polled`, that replica's all-reduce work inside its
    backward's calls, which delayed that end (on a core a replica, copies and sums take the
    core wherever they run: `exposed + polled` is the communication the step carried);
    `own`, the all-reduce's own time on that replica; `wait`, the time from the first
    replica's compute end to the last's (the faster replicas' wait for the slowest, which a
    replica's own `Busy.exposed` also counts)."""

    exposed: float
    own: float
    wait: float
    steps: int
    polled: float = 0.0


def critical_path(marks: Sequence[Sequence[ReduceMark]]) -> CriticalPath:
    """The replicas' ReduceMarks (each replica's in step order, the same steps) set side by
    side, step by step: a step's exposed communication counts from the latest compute end,
    on the replica that had it."""
    steps = {len(m) for m in marks}
    if not marks:
        raise ValueError("critical_path needs the marks of at least one replica")
    if len(steps) != 1:
        raise ValueError(f"replicas' marks cover different steps: {sorted(steps)}")
    exposed = own = wait = polled = 0.0
    for step in zip(*marks, strict=True):
        last = max(step, key=lambda m: m.compute_end)
        exposed += max(0.0, max(m.end for m in step) - last.compute_end)
        own += last.own
        polled += last.polled
        wait += last.compute_end - min(m.compute_end for m in step)
    return CriticalPath(exposed, own, wait, steps.pop(), polled)
