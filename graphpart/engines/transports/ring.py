"""The data-parallel transport: R replicas of a K-stage pipeline on R x K Ray actors, the same
stage of every replica joined in a ring for the all-reduce (K = 1: plain data parallelism).

It is made of the `shm` transport's parts (RayActors: Ray start-up, placement, BLAS pinning;
push's StepCalls: one call per actor a step, failure handling with abort; topology: channel
files and their removal) with another topology. Actor r * K + k is stage k of replica r:

    replica 0:  (0,0) -> (0,1) -> ... -> (0,K-1)      a chain: a pipeline's boundary tensors
    replica 1:  (1,0) -> (1,1) -> ... -> (1,K-1)
       ...        |        |               |          a ring per stage k: stage k of replica r
    replica R-1 (R-1,0) ...                           sends its all-reduce chunks to stage k
                                                      of replica (r + 1) mod R

With `channels` (transport "shm") a neighbour on the same node, in the chain or the ring, is
reached through a shared-memory channel (workers/channels.py; in a pipeline the driver also
writes each replica's micro-batch inputs into a channel to its stage 0, as the `shm`
transport does) and one on another node through Ray; without (transport "push") every tensor
and chunk goes through Ray (`deliver`). A worker takes both kinds of traffic from one inbox:
ring keys are negative (workers/ring.ring_key), micro-batch keys are not. Not a pipeline
transport (no `run_step`): it is not in TRANSPORTS, and graphpart.engines.DataParallel drives
it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from graphpart.engines.cluster import start_ray
from graphpart.engines.transports import topology
from graphpart.engines.transports.actors import RayActors
from graphpart.engines.transports.push import StepCalls
from graphpart.engines.transports.serving import Serving
from graphpart.engines.transports.shm import boundary_bytes, input_bytes, own_cores, this_node
from graphpart.engines.wiring import StepWiring
from graphpart.errors import ConfigError
from graphpart.params import params_dtype
from graphpart.plan import memory
from workers import actor as bodies
from workers.channels import Channel, ChannelName
from workers.push import FROM_INBOX
from workers.stage import WorkerSpec
from workers.stats import Finish

PLACEMENTS = ("pipeline", "replicas")  # what shares a node on a cluster (Ring.nodes_for)


class Ring(RayActors):
    """R replicas of `stages` stages each (R x K actors, replica-major), each stage's replicas
    in a ring; `run_replicas` runs one data-parallel step on all of them."""

    name = "ring"
    unit = "replica"
    body = bodies.ReplicaActor
    remote_options: ClassVar[dict[str, Any]] = {"concurrency_groups": {bodies.INBOX_GROUP: 1}}
    neighbour_wait_s = 600.0  # how long a worker waits for a neighbour's tensor or chunk
    close_wait_s = 5.0

    def __init__(
        self,
        address: str = "",
        num_cpus: int | None = None,
        step_timeout_s: float = 0.0,
        *,
        channels: bool = True,
        stages: int = 1,
        overlap: bool = True,
        placement: str = "pipeline",
    ) -> None:
        super().__init__(address, num_cpus, step_timeout_s)
        if placement not in PLACEMENTS:
            raise ConfigError(f"placement={placement!r}: use one of {', '.join(PLACEMENTS)}")
        self.placement = placement
        self.use_channels = bool(channels)
        self.overlap = bool(overlap)  # each worker all-reduces its buckets during its backward
        self.stages = int(stages)
        self.steps = StepCalls(self)
        self.channels: list[ChannelName] = []
        self.local_pairs: list[bool] = []  # per edge (grid_edges): its two ends on one node
        self.feeds: list[Channel | None] = []  # per replica: the driver's side of its input
        self._feed_dtype = np.dtype(np.float32)

    def nodes_for(self, workers: int) -> list[str | None]:
        """On a cluster of several nodes with CPUs: "pipeline" (the default) keeps a replica's
        K stages on one node and deals the replicas round the nodes (a pipeline hops every
        micro-batch, the all-reduce once a step); "replicas" keeps stage k of every replica on
        one node and deals the stages round the nodes. One node: Ray places them."""
        import ray

        nodes = sorted(
            n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0
        )
        if len(nodes) < 2:
            return [None] * workers
        K = self.stages
        pick = (lambda i: i // K) if self.placement == "pipeline" else (lambda i: i % K)
        return [nodes[pick(i) % len(nodes)] for i in range(workers)]

    @property
    def replicas(self) -> int:
        return len(self.actors) // self.stages

    def worker_name(self, k: int | str) -> str:
        """ "replica r" (one stage), "replica r, stage k" (a pipeline): actor r * K + k."""
        if isinstance(k, str) or self.stages == 1:
            return f"replica {k}"
        r, st = divmod(k, self.stages)
        return f"replica {r}, stage {st}"

    def start(self, specs: Sequence[WorkerSpec]) -> None:
        """Start the R x K workers; on CUDA, refuse (rather than wait for ever on Ray's
        scheduler) when the cluster has fewer GPUs than workers: each worker asks for one."""
        if len(specs) % self.stages:
            raise ValueError(f"{len(specs)} workers do not make replicas of {self.stages} stages")
        started = False
        try:
            if any(s.device == "cuda" for s in specs):
                import ray

                started = self.started = start_ray(self.address, self.num_cpus)
                gpus = float(ray.cluster_resources().get("GPU", 0.0))
                if gpus < len(specs):
                    each = "replica" if self.stages == 1 else "worker (replica x stage)"
                    raise ConfigError(
                        f"device='cuda' with {len(specs)} data-parallel workers needs a GPU "
                        f"per {each}; the Ray cluster has {gpus:g}"
                    )
            super().start(specs)
            self._connect(specs)
        finally:
            self.started = self.started or started  # so that close() stops the Ray it started

    def _connect(self, specs: Sequence[WorkerSpec]) -> None:
        K, R = self.stages, len(self.actors) // self.stages
        nodes = self.get([a.node.remote() for a in self.actors])
        tag = uuid.uuid4().hex[:12]
        edges, rings = grid_edges(R, K)

        def channels(e: int, a: int, b: int) -> list[tuple[int, int, str, int]]:
            if e in rings:  # a -> b: all-reduce chunks of stage a's gradients
                return [(a, b, f"{tag}-ring{e}", ring_channel_bytes(specs[a], R))]
            nbytes = boundary_bytes(specs[a])  # a -> b: activations; b -> a: their gradients
            return [(a, b, f"{tag}-{e}f", nbytes), (b, a, f"{tag}-{e}b", nbytes)]

        links = topology.link(nodes, edges, channels if self.use_channels else _none)
        self.local_pairs, self.channels = links.local, list(links.names)
        feeds: list[ChannelName | None] = [None] * R
        if self.use_channels and (K > 1 or R > 1):  # the driver feeds each stage 0, as on `shm`
            here = this_node()
            self._feed_dtype = params_dtype(specs[0].params)
            for r in range(R):
                if nodes[r * K] == here:
                    feeds[r] = ChannelName.new(f"{tag}-feed{r}", input_bytes(specs[r * K]))
                    self.channels.append(feeds[r])  # type: ignore[arg-type]
        if self.use_channels:
            own = own_cores(nodes)
            self.get(
                [
                    a.open_inbox.remote(
                        links.incoming[i], own, feeds[i // K] if i % K == 0 else None
                    )
                    for i, a in enumerate(self.actors)
                ]
            )
        self.feeds = [Channel.attach(f) if f is not None else None for f in feeds]

        def at(r: int, k: int) -> Any:
            return self.actors[r * K + k] if 0 <= k < K else None

        calls = []
        for i, a in enumerate(self.actors):
            r, k = divmod(i, K)
            left, right = ((r - 1) % R, (r + 1) % R) if R > 1 else (None, None)
            to = links.to[i]  # the channels i writes, by reader
            to_prev = to.get(i - 1) if k > 0 else None
            to_next = to.get(i + 1) if k < K - 1 else None
            calls += [
                a.connect_channels.remote(at(r, k - 1), at(r, k + 1), to_prev, to_next),
                a.connect_ring.remote(
                    r,
                    R,
                    None if left is None else at(left, k),
                    None if right is None else at(right, k),
                    None if right is None else to.get(right * K + k),
                    k,
                    K,
                ),
                a.set_overlap.remote(self.overlap),
            ]
        self.get(calls)
        if self.use_channels and all(n == this_node() for n in nodes):
            self.serving = Serving(self.actors)  # steps through the workers' FIFOs

    def set_overlap(self, overlap: bool) -> None:
        """Every worker overlaps its all-reduce with its backward from the next step, or not."""
        self.overlap = bool(overlap)
        self.quiesce()
        self.get([a.set_overlap.remote(self.overlap) for a in self.actors])

    def run_replicas(
        self,
        wirings: Sequence[StepWiring],
        xs: Sequence[Sequence[np.ndarray]],
        ys: Sequence[Sequence[np.ndarray]],
        scale: float,
        update: bool,
    ) -> list[Finish]:
        """One data-parallel step: replica r runs the wiring wirings[r] over its micro-batches
        xs[r] (labels ys[r]; the replicas may have different counts), each of its stages
        accumulating its gradients, then each stage's ring all-reduce and `finish`; every
        worker's Finish, replica-major (stage k of replica r at r * K + k)."""
        step, K = self.steps.next(), self.stages
        calls = []
        for r, w in enumerate(wirings):
            first = self._inputs(r, xs[r], step)
            for k in range(K):
                args = (
                    step,
                    w.stages[k],
                    first if k == 0 else None,
                    list(ys[r]) if k == K - 1 else None,
                    scale,
                    update,
                    self.neighbour_wait_s,
                )
                calls.append(("replica_step", args))
        return self.steps.run(calls, step)

    def _inputs(self, r: int, xs: Sequence[np.ndarray], step: int) -> Any:
        """Replica r's micro-batch inputs: written into its feed channel (in the model's
        dtype), or as Ray call arguments where it has none."""
        feed = self.feeds[r] if r < len(self.feeds) else None
        if feed is None:
            return list(xs)
        for m, x in enumerate(xs):
            feed.send((step, "F", m), np.asarray(x, dtype=self._feed_dtype))
        return FROM_INBOX

    def close(self) -> None:
        self.quiesce()
        for f in self.feeds:
            if f is not None:
                f.close()
        self.feeds = []
        topology.close(self.actors, self.channels, self.close_wait_s)
        self.channels = []
        super().close()


def grid_edges(replicas: int, stages: int) -> tuple[list[tuple[int, int]], set[int]]:
    """The edges between the R x K actors (r * K + k) and which of them are ring edges: each
    replica's chain (r, k) -> (r, k + 1), then each stage's ring (r, k) -> (r + 1 mod R, k)."""
    edges = [
        (r * stages + a, r * stages + b) for r in range(replicas) for a, b in topology.chain(stages)
    ]
    first_ring = len(edges)
    for k in range(stages):
        edges += [(a * stages + k, b * stages + k) for a, b in topology.ring(replicas)]
    return edges, set(range(first_ring, len(edges)))


def ring_channel_bytes(spec: WorkerSpec, world: int) -> int:
    """Bytes one worker sends its right neighbour in a step (graphpart.plan.memory's
    ring_channel_bytes of its stage's gradients, which the memory model counts)."""
    dtype = params_dtype(spec.params)
    grads = memory.grad_buffer_bytes(spec.graph, dtype)
    return memory.ring_channel_bytes(grads, world, dtype.itemsize)


def _none(e: int, a: int, b: int) -> list[tuple[int, int, str, int]]:
    return []  # transport "push": every tensor and chunk through Ray
