"""This machine's rates for `plan --auto`: each layer's kernels, matmul FLOP/s, memcpy, a hop."""

from __future__ import annotations

import statistics
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from threadpoolctl import threadpool_limits

from graphpart.engines import (
    Channel,
    ChannelInbox,
    ChannelName,
    call_seconds,
    ring_allreduce,
    unlink_channel,
)
from graphpart.engines.measure import layer_times, replica_buckets
from graphpart.ir.graph import Graph
from graphpart.optim import Optimizer, make_optimizer
from graphpart.plan.auto import Rates
from graphpart.plan.layer_times import slowest as slowest_layers
from graphpart.plan.workload import Workload
from graphpart.tools.compare.at_once import Barrier, at_once
from graphpart.tools.compare.project import hop_seconds

ROWS = (4, 16, 64, 256, 1024)  # micro-batch sizes the matmul rate is measured at
RING_SMALL = 4096  # bytes a chunk of the ring that times a ring message's latency
RING_MOST = 64 * 2**20  # the largest ring timed: its copies a byte hold for larger ones


def matmul_rate(rows: int, threads: int, dtype: str, seconds: float, n: int = 1024) -> float:
    """FLOP/s of (rows x n) @ (n x n), as a layer's forward multiplies, with `threads` threads."""
    a, w = np.ones((rows, n), dtype), np.ones((n, n), dtype)
    out = np.empty((rows, n), dtype)
    with threadpool_limits(threads):
        np.matmul(a, w, out=out)
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            np.matmul(a, w, out=out)
            count += 1
        return 2 * rows * n * n * count / (time.perf_counter() - t0)


def layer_rows(batch: int, devices: int, most_microbatches: int = 32) -> tuple[int, ...]:
    """The micro-batch sizes to time each layer at: `batch`, and the powers of two below it
    down to the fewest rows the search gives a micro-batch (a replica's share of `devices`
    in `most_microbatches`); between them the time model interpolates."""
    low = max(1, batch // (max(1, devices) * most_microbatches))
    rows, r = {batch}, 1
    while r < batch:
        if r * 2 > low:
            rows.add(r)
        r *= 2
    return tuple(sorted(rows))


def measure_rates(
    threads: int,
    dtype: str = "float32",
    seconds: float = 0.08,
    graph: Graph | None = None,
    workload: Workload | None = None,
    devices: int = 1,
    together: int = 1,
    calls: bool = False,
    address: str = "",
    whole_threads: int | None = None,
) -> Rates:
    """The matmul rate with `threads` BLAS threads at several micro-batch sizes (few rows run
    far below the peak), copy bandwidth (16 MiB), and a 1 MiB shared-memory hop's time less
    its copy (its fixed latency); with a `graph` and its `workload`, also each layer's F, I, W
    and update run by stage workers here with `threads` threads (`layer_times`, at the
    `layer_rows` of the workload's batch on `devices`), which the time model then reads.

    With `together` > 1, the same rates (all but the hop) are measured again by n processes
    at once for n = 2, 4, 8, ... and `together` (`counts`), each phase started at a barrier
    (Rates.together): what a device does while the others do the same. Of the n
    measurements, each figure is the slowest (`slowest`). With a `graph`, each of those also
    carries what a ring all-reduce over the n processes costs (`ring_seconds`): `ring_hop_s`,
    a ring message's latency from a ring of RING_SMALL bytes a chunk, and `ring_copies`, from
    a ring of the parameters' bytes. With `calls`, last (its processes would disturb the
    rest), the driver's call to `devices` Ray actors and their replies (`Rates.call_s`,
    graphpart.engines.call_seconds), on the Ray this process is connected to, else the
    cluster at `address` or a local one it starts, and leaves afterwards. With
    `whole_threads` other than `threads`, the same rates again with that many threads in this
    process (`Rates.whole`): what a one-device run in process, on every core, meets."""
    probe = Probe(threads, dtype, seconds, graph, workload, devices)
    rates = _measure(probe)
    if whole_threads is not None and whole_threads != threads:
        rates = replace(rates, whole=_measure(replace(probe, threads=int(whole_threads))))
    hop = max(0.0, hop_seconds(2**20) - 2**20 / rates.copy_bytes_per_s)
    shared = []
    for n in counts(together):  # n fresh processes, each phase started in step
        r = replace(slowest(at_once(n, f"{__name__}:_measure", (probe,))), hop_s=hop)
        if graph is not None:  # the gradients' ring, as data-parallel replicas run it
            r = _with_ring(r, n, _capped(replica_buckets(graph, dtype, n)))
        shared.append((n, r))
    call = _call_s(devices, address) if calls else 0.0
    whole = None if rates.whole is None else replace(rates.whole, hop_s=hop)
    return replace(rates, hop_s=hop, together=tuple(shared), call_s=call, whole=whole)


def _capped(buckets: Sequence[int]) -> tuple[int, ...]:
    """The leading buckets up to RING_MOST bytes in all (at least one): a round timed of
    them holds its copies a byte for a larger model's."""
    out, total = [], 0
    for b in buckets:
        if out and total + b > RING_MOST:
            break
        out.append(int(b))
        total += int(b)
    return tuple(out)


def _call_s(devices: int, address: str) -> float:
    """The driver's call to `devices` Ray workers (`call_seconds`); 0, with a warning naming
    why, where no Ray can be started or joined here: the search still runs."""
    try:
        return call_seconds(devices, address=address)
    except Exception as e:  # Ray's start and join errors have no common base class
        why = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        warnings.warn(f"Ray's call was not timed ({why}); the model leaves it out", stacklevel=2)
        return 0.0


def _with_ring(rates: Rates, n: int, buckets: tuple[int, ...]) -> Rates:
    """`rates` with the ring's latency and copies timed over `n` processes: a ring of
    RING_SMALL bytes a chunk, and a round of the gradients' `buckets` (bytes), a ring each
    one after another as a data-parallel replica runs them, whose copies a byte (the
    buckets' own latencies included) `ring_copies` keeps; unchanged, with a warning, where
    the machine cannot run the ring (a full /dev/shm, say)."""
    nbytes = sum(buckets)
    try:
        small, big = ring_seconds(n, (RING_SMALL * n, buckets))
    except (RuntimeError, OSError) as e:  # TimeoutError is an OSError
        warnings.warn(
            f"the ring all-reduce was not timed ({e}); the model's copies kept", stacklevel=2
        )
        return rates
    r = replace(rates, ring_hop_s=small / (2 * (n - 1)))
    return replace(r, ring_copies=ring_copies(r, n, nbytes, big))


def counts(most: int) -> list[int]:
    """The device counts the rates are measured together at: 2, 4, 8, ... below `most`, and
    `most` (none below 2): a handful of measurements however many devices there are."""
    out, n = [], 2
    while n < most:
        out.append(n)
        n *= 2
    return [*out, most] if most >= 2 else []


def ring_copies(rates: Rates, n: int, nbytes: int, seconds: float) -> float:
    """The copies of its chunk a ring step took, from a ring all-reduce of `nbytes` over `n`
    that took `seconds`: what `Rates.ring_s` then gives back for that ring (0 or more)."""
    per_step = seconds / (2 * (n - 1)) - rates.message_s
    return max(0.0, per_step * 2 * rates.copy_bytes_per_s * n / nbytes)


def slowest(rates: Sequence[Rates]) -> Rates:
    """Of rates measured at once by several processes: the lowest rate and the longest time of
    each figure (a step waits for its slowest device)."""
    first = rates[0]
    return Rates(
        flops_per_s=min(r.flops_per_s for r in rates),
        copy_bytes_per_s=min(r.copy_bytes_per_s for r in rates),
        hop_s=max(r.hop_s for r in rates),
        by_rows=tuple(
            (rows, min(dict(r.by_rows)[rows] for r in rates)) for rows, _ in first.by_rows
        ),
        layers=None if first.layers is None else slowest_layers([r.layers for r in rates]),
    )


@dataclass(frozen=True)
class Probe:
    """What `measure_rates` times (its arguments of the same names)."""

    threads: int
    dtype: str
    seconds: float
    graph: Graph | None
    workload: Workload | None
    devices: int


def _measure(p: Probe, sync: Callable[[], object] | None = None) -> Rates:
    """The rates but the hop (0), in this process; `sync` called before each timed phase."""
    threads, dtype, seconds, graph, workload = p.threads, p.dtype, p.seconds, p.graph, p.workload
    wait = sync if sync is not None else (lambda: None)
    layers = None
    if graph is not None and workload is not None:
        opt = workload.optimizer
        if not isinstance(opt, Optimizer):
            opt = make_optimizer(opt, lr=1e-3, momentum=workload.momentum)
        with threadpool_limits(threads):
            layers = layer_times(
                graph, layer_rows(workload.batch, p.devices), str(workload.dtype), opt, sync=sync
            )
    by_rows = []
    for r in ROWS:
        wait()
        by_rows.append((r, matmul_rate(r, threads, dtype, seconds)))
    src = np.ones(4 * 2**20, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    copies = []
    for _ in range(5):
        wait()
        copies.append(_timed(lambda: np.copyto(dst, src)))
    return Rates(
        flops_per_s=max(f for _, f in by_rows),
        copy_bytes_per_s=src.nbytes / min(copies),
        hop_s=0.0,
        by_rows=tuple(by_rows),
        layers=layers,
    )


Size = int | tuple[int, ...]  # one ring's bytes, or a round of buckets' rings (one step)


def ring_seconds(n: int, sizes: Sequence[Size], repeats: int = 5) -> list[float]:
    """Seconds of a ring all-reduce of each of `sizes` bytes of float32 over `n` processes at
    once, through shared-memory channels and workers/ring.py's arithmetic, as data-parallel
    replicas run it: the slowest process's median of `repeats` (after one untimed), by size.
    A tuple of sizes is one round: the buckets of one buffer, a ring each, one after another
    in one step, as a replica all-reduces its gradients (workers/buckets.py)."""
    token = uuid.uuid4().hex[:10]
    rounds = [tuple(int(b) for b in s) if isinstance(s, tuple) else (int(s),) for s in sizes]
    try:
        got = at_once(n, f"{__name__}:_ring", (token, rounds, int(repeats)))
    finally:  # a process killed before its own `finally` leaves its channel's files
        for rank in range(n):
            unlink_channel(_ring_channel(token, rank, 0))
    return [max(t[i] for t in got) for i in range(len(sizes))]


def _ring_channel(token: str, rank: int, capacity: int) -> ChannelName:
    return ChannelName.new(f"ring-{token}-{rank}", capacity)


def _ring(token: str, rounds: list[tuple[int, ...]], repeats: int, *, sync: Barrier) -> list[float]:
    """One process of `ring_seconds`: rank sync.rank of sync.world in the ring."""
    r, n = sync.rank, sync.world
    most = max(1, max(sum(b) for b in rounds) // 4)
    pad = 64 * 2 * n * max(len(b) for b in rounds)  # each message on a 64-byte line

    def name(rank: int) -> ChannelName:  # a step's messages: under 2 buffers
        return _ring_channel(token, rank, 8 * most + pad + 4096)

    reader = Channel.create(name(r))
    inbox = ChannelInbox([reader])
    writer = None
    out, step = [], 0
    try:
        sync()  # every process's channel exists
        writer = Channel.attach(name((r + 1) % n))

        def take(key: tuple[int, str, int]) -> np.ndarray:
            return inbox.take(key, 60.0)  # type: ignore[return-value]

        for buckets in rounds:
            lengths = [max(1, b // 4) for b in buckets]
            buf, times = np.ones(sum(lengths), np.float32), []
            ends = np.cumsum([0, *lengths])
            for i in range(repeats + 1):
                sync()
                t = time.perf_counter()
                for j in range(len(lengths)):  # bucket j's messages from phase j (n - 1)
                    part = buf[ends[j] : ends[j + 1]]
                    ring_allreduce(part, r, n, step, writer.send, take, j * (n - 1))
                step += 1
                if i:
                    times.append(time.perf_counter() - t)
            out.append(statistics.median(times))
        sync()  # nobody closes a channel that another still reads
    finally:
        if writer is not None:
            writer.close()
        inbox.close()
        unlink_channel(name(r))
    return out


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t
