"""Ring all-reduce: sum one 1-D buffer across `world` ranks in place, over any point-to-point
send and take (no Ray, no threads of its own; a data-parallel worker runs one per gradient
bucket, workers/buckets.py).

Each rank sends only to its right neighbour and receives only from its left one:

         chunk c of every rank is summed as it travels once round the ring
     +--------+  send   +--------+  send   +--------+          +----------+
     | rank 0 | ------> | rank 1 | ------> | rank 2 | -> ... -> | rank N-1 |
     +--------+         +--------+         +--------+          +----------+
          ^                                                          |
          +------------------------ send ----------------------------+

The buffer is cut into N chunks (np.array_split boundaries, so sizes differ by at most one and
a buffer shorter than N has empty chunks, which are neither sent nor taken).

- reduce-scatter, phases i = 0 .. N-2: rank r sends chunk (r - i) mod N to the right, takes
  chunk (r - i - 1) mod N from the left and adds it to its own. Chunk c starts at rank c and
  picks up one rank's values per hop, so after N-1 phases rank r holds the complete sum of
  chunk (r + 1) mod N.
- all-gather, phases i = 0 .. N-2: rank r sends chunk (r + 1 - i) mod N (first the one it
  completed, then the one it was just given) and takes chunk (r - i) mod N, which it copies
  over its own.

Every rank ends with the owner's copy of each chunk, so all ranks hold bit-identical sums.
A rank sends 2 (N-1)/N of the buffer in 2 (N-1) messages, whatever N is: the bandwidth-optimal
all-reduce. The messages' keys are workers.push.Key tuples (step, kind, -1 - phase): kind "F"
for the reduce-scatter, "B" for the all-gather (the two kinds a shared-memory channel encodes),
and a negative third field (`ring_key`), so that a worker that is also a pipeline stage (data
parallel x pipeline) can take its ring chunks and its neighbours' micro-batch tensors (keyed
by micro-batch, 0 and up) from one inbox without the keys ever colliding.
Each message is a (1, n) array (channels carry 2-D tensors); `send` must have copied or
serialised it when it returns, since the buffer changes afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

from workers.push import Key

REDUCE_SCATTER = "F"
ALL_GATHER = "B"


def ring_key(step: int, kind: str, phase: int) -> Key:
    """The key of phase `phase`'s message: (step, kind, -1 - phase), never a micro-batch's."""
    return (int(step), kind, -1 - int(phase))


def ring_phase(key: Key) -> int:
    """The phase a ring message's key names (ring_key's inverse)."""
    return -1 - int(key[2])


def ring_chunks(n: int, world: int) -> list[slice]:
    """The N chunks of an n-long buffer (np.array_split boundaries; empty when n < N)."""
    q, extra = divmod(int(n), int(world))
    bounds = [0]
    for c in range(world):
        bounds.append(bounds[-1] + q + (1 if c < extra else 0))
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def ring_allreduce(
    buf: np.ndarray,
    rank: int,
    world: int,
    step: int,
    send: Callable[[Key, np.ndarray], None],
    take: Callable[[Key], np.ndarray],
    first_phase: int = 0,
) -> int:
    """Replace `buf` (1-D, contiguous) by its sum over the `world` ranks; returns bytes sent.

    `send(key, a)` carries `a` to the right neighbour, `take(key)` waits for the left
    neighbour's message of that key. world == 1 is a no-op. The messages' phases count from
    `first_phase`, so that several buffers of one step (the buckets of workers/buckets.py:
    bucket b from b (world - 1)) never share a key.
    """
    return drive(ring_steps(buf, rank, world, step, send, first_phase), take)


def ring_steps(
    buf: np.ndarray,
    rank: int,
    world: int,
    step: int,
    send: Callable[[Key, np.ndarray], None],
    first_phase: int = 0,
) -> Generator[Key, np.ndarray, int]:
    """`ring_allreduce` as steps: yields the key of each message it needs from the left
    neighbour and goes on with the array sent in, so that its caller decides when to wait
    (workers/buckets.Progress runs it between kernel calls); returns the bytes sent."""
    if buf.ndim != 1 or not buf.flags.c_contiguous:
        raise ValueError(f"ring_allreduce needs a contiguous 1-D buffer, got shape {buf.shape}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a ring of {world}")
    return _steps(buf, rank, world, step, send, first_phase)


def _steps(
    buf: np.ndarray,
    rank: int,
    world: int,
    step: int,
    send: Callable[[Key, np.ndarray], None],
    first_phase: int,
) -> Generator[Key, np.ndarray, int]:
    chunks = ring_chunks(buf.size, world)
    sent = 0
    for kind in (REDUCE_SCATTER, ALL_GATHER):
        for i in range(world - 1):
            out, c = (
                (rank - i, rank - i - 1) if kind == REDUCE_SCATTER else (rank + 1 - i, rank - i)
            )
            part = buf[chunks[out % world]]
            key = ring_key(step, kind, first_phase + i)
            if part.size:
                send(key, part.reshape(1, -1))
                sent += part.nbytes
            mine = buf[chunks[c % world]]
            if not mine.size:
                continue
            a = np.asarray((yield key)).reshape(-1)
            if a.size != mine.size:
                raise ValueError(
                    f"all-reduce phase {kind}{i}: got {a.size} values for a chunk of {mine.size}"
                )
            if kind == REDUCE_SCATTER:
                mine += a
            else:
                mine[:] = a
    return sent


def drive(steps: Generator[Key, np.ndarray, int], take: Callable[[Key], np.ndarray]) -> int:
    """Run `steps` to its end, `take`-ing each message it needs; its result."""
    try:
        key = next(steps)
        while True:
            key = steps.send(take(key))
    except StopIteration as end:
        return end.value
