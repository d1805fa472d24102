"""Transport `shm`: push, with boundary tensors between neighbours on one node carried by
shared-memory channels instead of Ray calls.

Ray still places, starts and supervises the stage actors and carries the traffic between
neighbours on different nodes, and the driver's one call per stage a step where a stage is on
another node; with every stage on the driver's machine a step's calls go through the stages'
serve loops instead (serving.py: two FIFOs a stage, no Ray call).
Between two neighbours on the same node each direction gets a channel (workers/channels.py):
a buffer preallocated for a whole minibatch of boundary tensors and a FIFO announcing each
one, so a hop costs a memcpy and a system call, and a waiting stage sleeps in select().
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphpart.engines.transports import topology
from graphpart.engines.transports.push import Push
from graphpart.engines.transports.serving import Serving
from graphpart.engines.wiring import StepFeed
from graphpart.params import params_dtype
from graphpart.plan.memory import channel_bytes
from workers import actor as bodies
from workers import device_actor
from workers.channels import Channel, ChannelName
from workers.push import FROM_INBOX
from workers.stage import WorkerSpec


class Shm(Push):
    """Push, over shared memory between co-located neighbours."""

    name = "shm"
    virtual_stages = True  # a channel a direction for each boundary between two devices
    body = bodies.ChannelStageActor
    device_body = device_actor.ChannelDeviceActor
    close_wait_s = 5.0

    def __init__(
        self, address: str = "", num_cpus: int | None = None, step_timeout_s: float = 0.0
    ) -> None:
        super().__init__(address, num_cpus, step_timeout_s)
        self.channels: list[ChannelName] = []
        self.local_pairs: list[bool] = []  # per neighbour pair (k, k+1): on one node
        self.feed: Channel | None = None  # the driver's side of stage 0's input channel
        self._feed_dtype = np.dtype(np.float32)

    def _connect(self, specs: Sequence[WorkerSpec]) -> None:
        if self.owner:
            self._connect_devices(specs)
            return
        nodes = self.get([a.node.remote() for a in self.actors])
        k = len(self.actors)
        tag = uuid.uuid4().hex[:12]

        def pair(e: int, a: int, b: int) -> list[tuple[int, int, str, int]]:
            nbytes = boundary_bytes(specs[a])  # a -> b: activations; b -> a: their gradients
            return [(a, b, f"{tag}-{e}f", nbytes), (b, a, f"{tag}-{e}b", nbytes)]

        links = topology.link(nodes, topology.chain(k), pair)
        self.local_pairs, self.channels = links.local, list(links.names)
        own = own_cores(nodes)
        feed = None
        if nodes[0] == this_node():  # the driver feeds stage 0 through a channel too
            feed = ChannelName.new(f"{tag}-feed", input_bytes(specs[0]))
            self.channels.append(feed)
            self._feed_dtype = params_dtype(specs[0].params)
        self.get(
            [
                a.open_inbox.remote(links.incoming[i], own, feed if i == 0 else None)
                for i, a in enumerate(self.actors)
            ]
        )
        self.feed = Channel.attach(feed) if feed is not None else None
        self._serve_if_local(nodes)
        self.get(
            [
                a.connect_channels.remote(
                    self.actors[i - 1] if i > 0 else None,
                    self.actors[i + 1] if i < k - 1 else None,
                    links.to[i].get(i - 1),
                    links.to[i].get(i + 1),
                )
                for i, a in enumerate(self.actors)
            ]
        )

    def _connect_devices(self, specs: Sequence[WorkerSpec]) -> None:
        """Virtual stages: a channel a direction for each boundary between two devices on one
        node (interleaved's wrap-around edge included), each counted by its chunks as a
        stage's are; a device's turn (two of its chunks) has none, other nodes go through Ray."""
        nodes = self.get([a.node.remote() for a in self.actors])
        owner, tag = self.owner, uuid.uuid4().hex[:12]
        chunk = [owner[:s].count(owner[s]) for s in range(len(owner))]
        incoming: list[list[tuple[int, ChannelName]]] = [[] for _ in self.actors]
        outgoing: list[dict[str, tuple[int, str, ChannelName]]] = [{} for _ in self.actors]
        local = set()
        for s in range(len(owner) - 1):  # F channels into a stage before its B channels
            a, b = owner[s], owner[s + 1]
            if a != b and nodes[a] == nodes[b]:
                local.add((a, b))
                fwd = ChannelName.new(f"{tag}-{s}f", boundary_bytes(specs[s]))
                bwd = ChannelName.new(f"{tag}-{s}b", boundary_bytes(specs[s]))
                self.channels += [fwd, bwd]
                outgoing[a][f"F{s}"] = (chunk[s], "next", fwd)
                outgoing[b][f"B{s + 1}"] = (chunk[s + 1], "prev", bwd)
                incoming[b].append((s + 1, fwd))
                incoming[a].append((s, bwd))
        for d in range(len(self.actors)):  # per device: by stage, a stage's F before its B
            incoming[d] = [(chunk[s], n) for s, n in sorted(incoming[d], key=_stage_first)]
        feed = None
        if nodes[owner[0]] == this_node():
            feed = ChannelName.new(f"{tag}-feed", input_bytes(specs[0]))
            self.channels.append(feed)
            self._feed_dtype = params_dtype(specs[0].params)
        own = own_cores(nodes)
        self.get(
            [
                a.open_device_inbox.remote(incoming[d], own, feed if d == owner[0] else None)
                for d, a in enumerate(self.actors)
            ]
        )
        self.feed = Channel.attach(feed) if feed is not None else None
        self._serve_if_local(nodes)
        near = [{b for a, b in local if a == d} | {a for a, b in local if b == d} for d in nodes]
        self.get(
            [
                a.connect_device_channels.remote(*self._routes(d, near[d]), outgoing[d])
                for d, a in enumerate(self.actors)
            ]
        )

    def _inputs(self, feed: StepFeed[np.ndarray], step: int) -> Any:
        """Stage 0's micro-batch inputs, written into the feed channel (in the model's dtype)
        rather than put in Ray's object store: FROM_INBOX tells the stage to read them there."""
        if self.feed is None:
            return super()._inputs(feed, step)
        for m, x in enumerate(feed.xs):
            self.feed.send((step, "F", m), np.asarray(x, dtype=self._feed_dtype))
        return FROM_INBOX

    def _serve_if_local(self, nodes: Sequence[str]) -> None:
        """Every worker on this machine: steps go through their FIFOs (serving.py), not Ray."""
        if all(n == this_node() for n in nodes):
            self.serving = Serving(self.actors)

    def close(self) -> None:
        self.quiesce()
        if self.feed is not None:
            self.feed.close()
            self.feed = None
        topology.close(self.actors, self.channels, self.close_wait_s)
        self.channels = []
        super().close()


def _stage_first(item: tuple[int, ChannelName]) -> tuple[int, bool]:
    """A stage's channels in the order a stage's are numbered: from the previous (F), then
    from the next (B)."""
    return item[0], item[1].data.endswith("b.buf")


def boundary_bytes(spec: WorkerSpec) -> int:
    """Bytes one step's boundary tensors from this stage take: a whole minibatch of its output,
    plus alignment (graphpart.plan.memory.channel_bytes, which the memory model counts)."""
    return _minibatch_bytes(spec, spec.graph.var(spec.output).shape)


def input_bytes(spec: WorkerSpec) -> int:
    """Bytes of one step's micro-batch inputs to the first stage, a whole minibatch wide."""
    return _minibatch_bytes(spec, spec.graph.inputs[0].shape)


def _minibatch_bytes(spec: WorkerSpec, shape: Sequence[int | str]) -> int:
    """A channel's bytes for a whole minibatch of tensors of `shape` ("B": the rows)."""
    width = int(np.prod([d for d in shape if d != "B"]))
    itemsize = params_dtype(spec.params).itemsize
    return channel_bytes(width, max(spec.batch_rows, spec.max_rows), itemsize)


def this_node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def own_cores(nodes: Sequence[str]) -> bool:
    """Whether every node has at least a CPU for each stage placed on it (a stage's wait may
    then poll its channels longer before it sleeps)."""
    import ray

    cpus = {n["NodeID"]: n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n["Alive"]}
    return all(nodes.count(n) <= cpus.get(n, 0) for n in set(nodes))
