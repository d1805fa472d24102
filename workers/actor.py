"""The Ray actors' bodies: thin shells around StageWorker that pin BLAS threads and name failures.

The classes are plain Python (no Ray import here): the engine's transports turn them into
actors with `ray.remote(...)`, so importing the engines does not import Ray.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from workers import alloc
from workers.actions import StageAction
from workers.buckets import Progress
from workers.channels import Channel, ChannelInbox, ChannelName
from workers.push import ActionFailed, Inbox, Key, NeighbourFailed, Send, run_step
from workers.ring import ring_phase, ring_steps
from workers.serve import serve
from workers.stage import WorkerSpec
from workers.stats import Finish

BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
INBOX_GROUP = "inbox"  # the concurrency group deliveries run in (PushStageActor)


def blas_env(threads: int) -> dict[str, str]:
    """Environment for a worker process whose BLAS may use `threads` threads."""
    return dict.fromkeys(BLAS_ENV, str(int(threads)))


def worker_env(threads: int) -> dict[str, str]:
    """Environment for a stage's or replica's process: BLAS threads and the allocator."""
    return {**blas_env(threads), **alloc.ENV}


class StageActor:
    """A stage answering one call per action (`call("forward", m, ...)`). Given several
    specs it is a device of virtual stages: one worker a chunk (`workers`, chunk 0 first),
    `call_chunk(c, ...)` calling chunk c's."""

    def __init__(self, blas_threads: int, spec: WorkerSpec | Sequence[WorkerSpec]) -> None:
        threadpool_limits(int(blas_threads))  # in case BLAS was loaded before the env applied
        self.threads = int(blas_threads)
        specs = list(spec) if isinstance(spec, Sequence) else [spec]
        ahead = len(specs) > 1  # every chunk's warm-up before the first chunk's baseline
        for s in specs if ahead else ():
            s.warm()
        self.workers = [s.build(warm=not ahead) for s in specs]
        self.worker = self.workers[0]

    def _failure(self, what: str, e: BaseException) -> RuntimeError:
        return RuntimeError(
            f"stage {self.worker.index} ({os.uname().nodename}, pid {os.getpid()}) failed in "
            f"{what}: {type(e).__name__}: {e}"
        )

    # methods whose result Ray serialises as the call returns (before the next call can
    # change the arrays): no private copy of them first
    SERIALISED_AT_ONCE: ClassVar[dict[str, dict[str, Any]]] = {
        "get_state": {"copy": False},
        "get_params": {"copy": False},
    }

    def call(self, method: str, *args: Any) -> Any:
        return self.call_chunk(0, method, *args)

    def call_chunk(self, chunk: int, method: str, *args: Any) -> Any:
        """`call` on chunk `chunk`'s worker (a device of virtual stages; 0: the stage's)."""
        worker = self.workers[chunk]
        try:
            return getattr(worker, method)(*args, **self.SERIALISED_AT_ONCE.get(method, {}))
        except Exception as e:
            what = method
            if method in ("forward", "backward") and args:
                what = f"{method} of micro-batch {args[0]}"
            if chunk:
                what += f" of virtual stage {worker.index}"
            raise self._failure(what, e) from e

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "node": os.uname().nodename,
            "threads": self.threads,
            "blas": [(i.get("internal_api"), i.get("num_threads")) for i in threadpool_info()],
        }


class PushStageActor(StageActor):
    """A stage that runs a whole step per call (workers/push.py) and pushes its boundary
    tensors straight to its neighbours' `deliver`. Deliveries and aborts are called in the
    INBOX_GROUP concurrency group, so they run on their own thread while `run_step` waits
    for them on the default one."""

    def __init__(self, blas_threads: int, spec: WorkerSpec) -> None:
        super().__init__(blas_threads, spec)
        self.inbox = Inbox()
        self.prev: Any = None
        self.next: Any = None
        self.send_forward: Send | None = None
        self.send_backward: Send | None = None
        self.routes: dict[str, Send] | None = None  # virtual stages: by the sender's tag
        self.peers: list[Any] = []  # the workers to wake when this one fails (beyond prev, next)

    def connect(self, prev: Any, nxt: Any) -> None:
        self.prev, self.next = prev, nxt
        self.send_forward = None if nxt is None else _sender(nxt)
        self.send_backward = None if prev is None else _sender(prev)

    def deliver(self, key: Key, value: Any) -> None:
        self.inbox.put(key, value)

    def alive(self) -> int:
        """A ping answered on the inbox thread, so it answers while a step runs."""
        return os.getpid()

    def abort(self, step: int, why: str) -> None:
        self.inbox.fail(step, why)

    def serve(self, control: str, reply: str) -> int:
        """Take calls from the driver's FIFOs instead of Ray until it says stop (workers/serve.py):
        a step costs neither side a Ray call."""
        return serve(self, control, reply)

    def run_step(
        self,
        step: int,
        actions: Sequence[StageAction],
        xs: Any,
        ys: Any,
        scale: float,
        update: bool,
        timeout_s: float = 600.0,
        infer: bool = False,
    ) -> Finish | list[np.ndarray]:
        nxt, prev = self.next, self.prev
        try:
            return run_step(
                self.workers if self.routes is not None else self.worker,
                step,
                actions,
                self.inbox,
                xs=xs,
                ys=ys,
                scale=scale,
                update=update,
                timeout_s=timeout_s,
                send_forward=self.send_forward,
                send_backward=self.send_backward,
                infer=infer,
                routes=self.routes,
                busy=self.worker.busy,
            )
        except NeighbourFailed as e:
            raise RuntimeError(f"stage {self.worker.index} stopped: {e}") from None
        except Exception as e:
            cause = e.cause if isinstance(e, ActionFailed) else e
            err = self._failure(e.what if isinstance(e, ActionFailed) else "run_step", cause)
            for peer in {id(p): p for p in (prev, nxt, *self.peers)}.values():  # wake them
                if peer is not None:
                    peer.abort.options(concurrency_group=INBOX_GROUP).remote(step, str(err))
            raise err from cause


class ChannelStageActor(PushStageActor):
    """A PushStageActor whose neighbours on the same node are reached through shared-memory
    channels (workers/channels.py) instead of actor calls; a neighbour on another node is
    still reached through Ray (`deliver`)."""

    def open_inbox(
        self, incoming: list[ChannelName], own_core: bool = False, feed: ChannelName | None = None
    ) -> None:
        """Create the channels this stage reads (from the previous and/or the next stage, and
        `feed`: the driver's minibatch inputs); `own_core`: no other stage shares this one's
        core, so a wait polls longer first."""
        spin = ChannelInbox.SPIN_OWN_CORE if own_core else ChannelInbox.SPIN_SHARED_CORE
        chans = [*incoming, *([feed] if feed is not None else [])]
        self.inbox = ChannelInbox([Channel.create(n) for n in chans], spin)
        for i, n in enumerate(incoming):  # mapped here, so counted here (and by the sender)
            self.worker.ledger.add(f"channel:in{i}", "boundary", n.capacity)
        if feed is not None:
            self.worker.ledger.add("channel:feed", "boundary", feed.capacity)
        self.outgoing: list[Channel] = []

    def connect_channels(
        self, prev: Any, nxt: Any, to_prev: ChannelName | None, to_next: ChannelName | None
    ) -> None:
        """Neighbours as actor handles; where a channel name is given, send through it."""
        self.connect(prev, nxt)
        for name, side in ((to_next, "send_forward"), (to_prev, "send_backward")):
            if name is not None:
                ch = Channel.attach(name)
                self.outgoing.append(ch)
                to = "to_next" if side == "send_forward" else "to_prev"
                self.worker.ledger.add(f"channel:{to}", "boundary", name.capacity)
                setattr(self, side, ch.send)

    def node(self) -> str:
        import ray  # the Ray node this actor runs on (lazy: these bodies never need Ray)

        return ray.get_runtime_context().get_node_id()

    def close_channels(self) -> None:
        for ch in self.outgoing:
            ch.close()
        self.outgoing = []
        if isinstance(self.inbox, ChannelInbox):
            self.inbox.close()


class ReplicaActor(ChannelStageActor):
    """A data-parallel replica, or one stage of one (data parallel x pipeline): its part of the
    model on its replica's rows of each minibatch, gradients summed with the same stage of the
    other replicas by a ring all-reduce (workers/ring.py) before the optimizer step.

    It sends to its right neighbour in the ring through a shared-memory channel when they are
    on one node, through Ray (`deliver`) otherwise, and takes from its left neighbour through
    its inbox. As a pipeline stage it also has the previous and next stage of its own replica
    (`connect_channels`), whose micro-batch tensors share the inbox with the ring's chunks
    (ring keys are negative: workers/ring.ring_key). Errors name "replica r" ("replica r,
    stage k" in a pipeline); a worker that fails wakes its ring and pipeline neighbours.
    """

    def __init__(self, blas_threads: int, spec: WorkerSpec) -> None:
        super().__init__(blas_threads, spec)
        self.outgoing: list[Channel] = []
        self.rank, self.world = self.worker.index, 1
        self.stage, self.stages = 0, 1  # this worker's stage of its replica's pipeline
        self.left: Any = None
        self.right: Any = None
        self.send_right: Send | None = None
        self.overlap = True  # all-reduce each bucket while the backward runs (set_overlap)

    def set_overlap(self, overlap: bool) -> None:
        """Overlap the all-reduce with the backward (each bucket started as soon as final and
        advanced between the backward's kernel calls), or run the buckets after the backward
        (the same sums in the same order)."""
        self.overlap = bool(overlap)

    @property
    def who(self) -> str:
        """How errors name this worker: "replica r", or "replica r, stage k" in a pipeline."""
        return f"replica {self.rank}" + (f", stage {self.stage}" if self.stages > 1 else "")

    def _failure(self, what: str, e: BaseException) -> RuntimeError:
        return RuntimeError(
            f"{self.who} ({os.uname().nodename}, pid {os.getpid()}) failed in "
            f"{what}: {type(e).__name__}: {e}"
        )

    def connect_ring(
        self,
        rank: int,
        world: int,
        left: Any,
        right: Any,
        to_right: ChannelName | None,
        stage: int = 0,
        stages: int = 1,
    ) -> None:
        """Take place `rank` of a ring of `world` replicas (of stage `stage` of `stages`: the
        ring joins that stage of every replica); `left` and `right` are the neighbours' actor
        handles (None when alone), `to_right` the channel to the right one when it shares this
        node."""
        self.rank, self.world = int(rank), int(world)
        self.stage, self.stages = int(stage), int(stages)
        self.left, self.right = left, right
        if to_right is not None:
            ch = Channel.attach(to_right)
            self.outgoing.append(ch)
            self.worker.ledger.add("channel:to_right", "boundary", to_right.capacity)
            self.send_right = ch.send
        elif right is not None:
            self.send_right = _sender(right)

    def replica_step(
        self,
        step: int,
        actions: Sequence[StageAction],
        xs: Sequence[Any] | str | None,
        ys: Sequence[Any] | None,
        scale: float,
        update: bool,
        timeout_s: float = 600.0,
    ) -> Finish:
        """This worker's actions (its stage's part of its replica's wiring over the replica's
        micro-batches, losses scaled by `scale`, 1/N of the whole minibatch: `xs` and `ys` as
        run_step takes them, given to the first and last stage), the all-reduce of the
        gradients with the same stage of the other replicas, `finish`."""
        w = self.worker
        progress = Progress(self.inbox.has, self._ring_take(step, timeout_s))

        def reduce_on(flat: Any, bucket: int) -> Any:
            return ring_steps(
                flat, self.rank, self.world, step, self._send_right, bucket * (self.world - 1)
            )

        overlap = self.overlap and self.world > 1
        try:
            return run_step(  # type: ignore[return-value]
                w,
                step,
                actions,
                self.inbox,
                xs=xs,
                ys=ys,
                scale=scale,
                update=update,
                send_forward=self.send_forward,
                send_backward=self.send_backward,
                timeout_s=timeout_s,
                reduce=lambda: w.reduce_grads(reduce_on, self.world, progress),
                arm=(lambda: w.arm_reduce(reduce_on, self.world, progress)) if overlap else None,
                busy=w.busy,
            )
        except NeighbourFailed as e:
            progress.abandon()
            w.disarm_reduce()
            w.zero_grad()  # the half-reduced gradients must not leak into a later step
            raise RuntimeError(f"{self.who} stopped: {e}") from None
        except Exception as e:
            cause = e.cause if isinstance(e, ActionFailed) else e
            err = self._failure(e.what if isinstance(e, ActionFailed) else "replica_step", cause)
            progress.abandon()
            w.disarm_reduce()
            w.zero_grad()
            # wake the neighbours waiting on this worker: in the ring and in the pipeline
            for peer in (self.left, self.right, self.prev, self.next):
                if peer is not None:
                    peer.abort.options(concurrency_group=INBOX_GROUP).remote(step, str(err))
            raise err from cause

    def _ring_take(self, step: int, timeout_s: float) -> Any:
        """How a bucket's ring waits for its left neighbour's message: a timeout names the
        replica, the bucket and the phase."""
        left = (self.rank - 1) % self.world
        phases = self.world - 1

        def take(key: Key) -> Any:
            try:
                return self.inbox.take(key, timeout_s)
            except TimeoutError:
                what = "reduce-scatter" if key[1] == "F" else "all-gather"
                stage = f", stage {self.stage}," if self.stages > 1 else ""
                b, phase = divmod(ring_phase(key), phases)
                raise TimeoutError(
                    f"replica {left}{stage} sent no {what} chunk of bucket {b}, phase {phase} "
                    f"in {timeout_s:.0f} s"
                ) from None

        return take

    def _send_right(self, key: Key, a: Any) -> None:
        if self.send_right is None:
            raise RuntimeError(f"{self.who} is not connected to a ring")
        self.send_right(key, a)


def _sender(peer: Any) -> Any:
    deliver = peer.deliver.options(concurrency_group=INBOX_GROUP)
    return lambda key, a: deliver.remote(key, a)
