"""(a) One boundary transfer between two actors: a direct push, a shared-memory channel."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from graphpart.engines import Channel, ChannelInbox, ChannelName, unlink_channel
from graphpart.tools.machine import time_calls

TRANSFER_SHAPE = (256, 1024)  # float32: 1 MiB, one micro-batch boundary of a 1024-wide layer
TARGET_TRANSFER_MS = 0.5  # one 1 MiB hop on the default transport (shm)


class _Peer:
    """A stage stand-in: holds a 1 MiB boundary buffer, pushes it, receives one."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.big = np.ones(shape, np.float32)

    def noop(self) -> None:
        return None

    def recv(self, a: np.ndarray) -> float:
        return float(a[0, 0])

    def relay(self, i: int, other: Any) -> float:
        """Push the boundary array to `other` as a direct actor call, as a PushStageActor does,
        and wait for its answer."""
        import ray

        self.big[0, 0] = i  # written in place, as a stage writes its boundary buffer
        return ray.get(other.recv.remote(self.big))


class _ChannelPeer:
    """A stage stand-in on a shared-memory channel pair: `echo` returns what arrives, `ping`
    times round trips; each received tensor is copied into an own buffer, as a stage does."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.big = np.ones(shape, np.float32)
        self.own = np.empty(shape, np.float32)

    def open(self, incoming: ChannelName) -> None:
        self.inbox = ChannelInbox([Channel.create(incoming)])

    def attach(self, outgoing: ChannelName) -> None:
        self.out = Channel.attach(outgoing)

    def echo(self, n: int) -> None:
        for i in range(n):
            np.copyto(self.own, self.inbox.take((i, "F", 0), 60))
            self.out.send((i, "B", 0), self.own)

    def ping(self, n: int) -> list[float]:
        times = []
        for i in range(n):
            t = time.perf_counter()
            self.out.send((i, "F", 0), self.big)
            np.copyto(self.own, self.inbox.take((i, "B", 0), 60))
            times.append(time.perf_counter() - t)
        return times

    def close(self) -> None:
        self.out.close()
        self.inbox.close()


def measure_shm_hop(n: int, shape: tuple[int, int]) -> float:
    """Median ms of one hop of the boundary array through a shared-memory channel between two
    actors (half a round trip a -> b -> a; each side copies what it receives)."""
    import ray

    peer = ray.remote(num_cpus=1)(_ChannelPeer)
    a, b = peer.remote(shape), peer.remote(shape)
    nbytes = int(np.prod(shape)) * 4 + 64
    tag = uuid.uuid4().hex[:12]
    ab, ba = ChannelName.new(f"{tag}-ab", nbytes), ChannelName.new(f"{tag}-ba", nbytes)
    try:
        ray.get([b.open.remote(ab), a.open.remote(ba)])
        ray.get([a.attach.remote(ab), b.attach.remote(ba)])
        done = b.echo.remote(n)
        times = ray.get(a.ping.remote(n))
        ray.get(done)
        ray.get([a.close.remote(), b.close.remote()])
    finally:
        for actor in (a, b):
            ray.kill(actor)
        unlink_channel(ab)
        unlink_channel(ba)
    return statistics.median(times[5:]) / 2 * 1e3


def _median_ms(fn: Callable[[int], Any], n: int, warmup: int = 5) -> float:
    return statistics.median(time_calls(fn, n, warmup)) * 1e3


def measure_transfer(n: int = 200, shape: tuple[int, int] = TRANSFER_SHAPE) -> dict[str, Any]:
    """Medians (ms) of: an empty actor call; a push of the boundary array from actor a to
    actor b (a's call to b, less an empty call); one hop on a shared-memory channel."""
    import ray

    peer = ray.remote(num_cpus=1)(_Peer)
    a, b = peer.remote(shape), peer.remote(shape)
    out: dict[str, Any] = {"shape": list(shape), "bytes": int(np.prod(shape)) * 4, "samples": n}
    try:
        ray.get([a.noop.remote(), b.noop.remote()])
        out["empty_call_ms"] = _median_ms(lambda i: ray.get(a.noop.remote()), n)
        out["push_round_trip_ms"] = _median_ms(lambda i: ray.get(a.relay.remote(i, b)), n)
        out["push_hop_ms"] = max(0.0, out["push_round_trip_ms"] - out["empty_call_ms"])
    finally:
        for actor in (a, b):
            ray.kill(actor)
    out["shm_hop_ms"] = measure_shm_hop(n, shape)  # after the peers above freed their CPUs
    out["target_ms"] = TARGET_TRANSFER_MS
    out["target_met"] = out["shm_hop_ms"] < TARGET_TRANSFER_MS
    return out
