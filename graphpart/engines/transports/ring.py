"""The data-parallel transport: one Ray actor per replica, joined in a ring for the all-reduce.

It is made of the `shm` transport's parts (RayActors: Ray start-up, placement, BLAS pinning;
push's StepCalls: one call per actor a step, failure handling with abort; topology: channel
files and their removal) with another topology: instead of a chain of stages, replica r sends
its all-reduce chunks to replica (r + 1) mod K. With `channels` (transport "shm") a neighbour
on the same node is reached through a shared-memory channel (workers/channels.py) and one on
another node through Ray; without (transport "push") every chunk goes through Ray
(`deliver`). Not a pipeline transport (no `run_step`): it is not in TRANSPORTS, and
graphpart.engines.DataParallel drives it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import cache
from typing import Any, ClassVar

import numpy as np

from graphpart.engines.cluster import first_line, start_ray
from graphpart.engines.transports import topology
from graphpart.engines.transports.actors import RayActors
from graphpart.engines.transports.push import StepCalls
from graphpart.engines.wiring import wire
from graphpart.errors import ConfigError
from graphpart.params import params_dtype
from graphpart.plan import memory
from workers import actor as bodies
from workers.actions import StageAction
from workers.channels import ChannelName
from workers.stage import WorkerSpec
from workers.stats import Finish


class Ring(RayActors):
    """K replica actors in a ring; `run_replicas` runs one data-parallel step on all of them."""

    name = "ring"
    unit = "replica"
    body = bodies.ReplicaActor
    remote_options: ClassVar[dict[str, Any]] = {"concurrency_groups": {bodies.INBOX_GROUP: 1}}
    neighbour_wait_s = 600.0  # how long a replica waits for its left neighbour's chunk
    close_wait_s = 5.0

    def __init__(
        self,
        address: str = "",
        num_cpus: int | None = None,
        step_timeout_s: float = 0.0,
        *,
        channels: bool = True,
    ) -> None:
        super().__init__(address, num_cpus, step_timeout_s)
        self.use_channels = bool(channels)
        self.steps = StepCalls(self)
        self.channels: list[ChannelName] = []
        self.local_pairs: list[bool] = []  # per replica r: r and r + 1 on one node

    def start(self, specs: Sequence[WorkerSpec]) -> None:
        """Start the replicas; on CUDA, refuse (rather than wait for ever on Ray's scheduler)
        when the cluster has fewer GPUs than replicas: each replica actor asks for one."""
        started = False
        try:
            if any(s.device == "cuda" for s in specs):
                import ray

                started = self.started = start_ray(self.address, self.num_cpus)
                gpus = float(ray.cluster_resources().get("GPU", 0.0))
                if gpus < len(specs):
                    raise ConfigError(
                        f"device='cuda' with {len(specs)} data-parallel replicas needs a GPU "
                        f"per replica; the Ray cluster has {gpus:g}"
                    )
            super().start(specs)
            self._connect(specs)
        finally:
            self.started = self.started or started  # so that close() stops the Ray it started

    def _connect(self, specs: Sequence[WorkerSpec]) -> None:
        k = len(self.actors)
        nodes = self.get([a.node.remote() for a in self.actors])
        tag = uuid.uuid4().hex[:12]

        def right(e: int, a: int, b: int) -> list[tuple[int, int, str, int]]:
            return [(a, b, f"{tag}-ring{e}", ring_channel_bytes(specs[a], k))]

        links = topology.link(nodes, topology.ring(k), right if self.use_channels else _none)
        self.local_pairs, self.channels = links.local, list(links.names)
        if self.use_channels:
            self.get([a.open_inbox.remote(links.incoming[r]) for r, a in enumerate(self.actors)])
        self.get(
            [
                a.connect_ring.remote(
                    r,
                    k,
                    self.actors[(r - 1) % k] if k > 1 else None,
                    self.actors[(r + 1) % k] if k > 1 else None,
                    links.to[r].get((r + 1) % k),
                )
                for r, a in enumerate(self.actors)
            ]
        )

    def run_replicas(
        self,
        xs: Sequence[Sequence[np.ndarray]],
        ys: Sequence[Sequence[np.ndarray]],
        scale: float,
        update: bool,
    ) -> list[Finish]:
        """One data-parallel step: replica r runs its micro-batches xs[r] (labels ys[r]; the
        replicas may have different counts), accumulating their gradients, then the ring
        all-reduce and its `finish`; each replica's Finish, in replica order."""
        step = self.steps.next()
        refs = [
            a.replica_step.remote(
                step,
                replica_actions(len(xs[r])),
                list(xs[r]),
                list(ys[r]),
                scale,
                update,
                self.neighbour_wait_s,
            )
            for r, a in enumerate(self.actors)
        ]
        return self.steps.collect(refs, step)

    def close(self) -> None:
        topology.close(self.actors, self.channels, self.close_wait_s)
        self.channels = []
        super().close()

    def died(self, e: Exception) -> str:
        """'replica r's worker process died (...)': the replica named from the dead actor."""
        dead = getattr(e, "actor_id", None)
        ids = [a._actor_id.hex() for a in self.actors]
        who = f"replica {ids.index(dead)}" if dead in ids else "a replica"
        return f"{who}'s worker process died ({first_line(e)})"


@cache
def replica_actions(microbatches: int) -> tuple[StageAction, ...]:
    """A replica's actions for a step of `microbatches` micro-batches: a one-stage 1F1B
    wiring, F0 B0 F1 B1 ... (its gradients accumulate over them), made once per count."""
    return tuple(wire("1f1b", 1, int(microbatches)).stages[0])


def ring_channel_bytes(spec: WorkerSpec, world: int) -> int:
    """Bytes one replica sends its right neighbour in a step (graphpart.plan.memory's
    ring_channel_bytes of its gradients, which the memory model counts)."""
    size = sum(int(np.prod(v.concrete_shape(1), dtype=np.int64)) for v in spec.graph.params)
    itemsize = params_dtype(spec.params).itemsize
    return memory.ring_channel_bytes(size * itemsize, world, itemsize)


def _none(e: int, a: int, b: int) -> list[tuple[int, int, str, int]]:
    return []  # transport "push": every chunk through Ray
