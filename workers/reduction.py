"""Data parallelism's part of a stage worker: its gradients summed across the replicas, bucket
by bucket, after the backward or overlapping it (workers/buckets.py)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from workers.buckets import Bucket, Progress, Ready, Steps, exposed_time, own_time, plan_buckets
from workers.finals import Final
from workers.stats import ReduceMark

MARKS_KEPT = 1024  # steps whose ReduceMark a worker keeps (StageStats.reduce_marks)

# (a bucket's part of the flat all-reduce buffer, the bucket's index) -> its ring's steps
# (workers/ring.ring_steps: the keys it waits for; it returns the bytes it sent)
Reduce = Callable[[np.ndarray, int], Steps]


class GradientReduction:
    """The all-reduce methods of `workers.stage.StageWorker`, which holds the state they use
    (its program, backend, ledger, busy clocks and traffic counters)."""

    prog: Any
    bk: Any
    busy: Any
    ledger: Any
    bucket_bytes: int
    bytes_sent: int
    bytes_received: int
    _armed: Ready | None
    _flat: np.ndarray | None
    _bucket_plans: dict[int, tuple[Bucket, ...]]
    _compute_end: float
    _polled: float
    _polled_cpu: float
    _last_poll: float
    _polled_at_arm: float
    reduce_marks: deque[ReduceMark]

    def reduce_grads(self, reduce: Reduce, world: int, progress: Progress) -> None:
        """Data parallelism: replace this step's gradients by their sum over the `world`
        replicas, bucket by bucket (workers/buckets.py).

        `reduce(part, bucket)` gives the steps that sum each bucket's part of the gradients'
        one buffer (Program.flat_grads) in place across the replicas; on a GPU the part is
        staged through a host buffer and copied back. Gradients that got no value this step
        are zeroed first (`finish_grads`). The buckets `arm_reduce` did not already hand to
        `progress` are handed over here, in order, and this waits for them all. Call it
        between the last backward and `finish`, which adds the regulariser's gradient once,
        after the sum, identically on every replica. Busy.allreduce gains the buckets' own
        time, Busy.exposed what the step waited for after its last backward compute
        (workers/buckets.py's spans), and `reduce_marks` the step's ReduceMark, which the
        replicas' marks set side by side split into the wait for the slowest replica and the
        communication after it (workers/buckets.critical_path).
        """
        prog = self.prog
        armed, self._armed = self._armed, None
        prog.grad_hook = None
        self._allreduce_buffer()
        prog.finish_grads()  # only parameters no bucket was handed over for are fresh
        for b in (armed or Ready(self._buckets(world))).rest():
            progress.submit(partial(self._bucket_steps, b, reduce))
        done = progress.drain()
        self.bytes_sent += done.sent
        self.bytes_received += done.received
        own = own_time(done.spans)
        self.busy.allreduce += own
        self.busy.exposed += exposed_time(done.spans, self._compute_end)
        self.busy.reductions += 1
        end = max((s.end for s in done.spans), default=self._compute_end)
        polled = self._polled - self._polled_at_arm if armed is not None else 0.0
        self.reduce_marks.append(ReduceMark(self._compute_end, end, own, polled))

    def arm_reduce(self, reduce: Reduce, world: int, progress: Progress) -> None:
        """Overlap: call right before this step's last weight-gradient action (the last B or W
        of the step's actions; after it every gradient is final). Each bucket is handed to
        `progress` as soon as that action has written its gradients, in bucket order, and
        the buckets under way advance after each of its kernel calls, while the action goes
        on with the earlier layers; `reduce_grads` then finishes them. On CUDA nothing is
        armed: reduce_grads reduces every bucket."""
        if self.bk.name != "cpu":
            return
        ready = Ready(self._buckets(world))
        self._allreduce_buffer()

        def final(done: tuple[Final, ...]) -> None:
            t, c = time.perf_counter(), time.thread_time()
            for name, upto in done:
                for b in ready.final(name, upto):
                    progress.submit(partial(self._bucket_steps, b, reduce))
            progress.poll()
            self._last_poll = time.perf_counter() - t
            self._polled += self._last_poll
            self._polled_cpu += time.thread_time() - c

        self._armed = ready
        self._polled_at_arm = self._polled
        self.prog.grad_hook = final

    def disarm_reduce(self) -> None:
        """Forget an armed all-reduce (a failed step)."""
        self._armed = None
        self.prog.grad_hook = None

    def _bucket_steps(self, b: Bucket, reduce: Reduce) -> Steps:
        """One bucket's all-reduce, in place. On the host the buffer is the gradients' own
        (Program.flat_grads, laid out as the buckets are); on a device its gradients are
        copied into the bucket's part of a host buffer, summed, and copied back."""
        bk, grads, flat = self.bk, self.prog.grads, self._flat
        assert flat is not None
        staged = flat is not self.prog.flat_grads
        if staged:
            for p in b.pieces:
                flat[p.at : p.at + p.hi - p.lo] = bk.to_host(bk.flat(grads[p.name])[p.lo : p.hi])
        sent = yield from reduce(flat[b.start : b.stop], b.index)
        if staged:
            for p in b.pieces:
                bk.from_host(flat[p.at : p.at + p.hi - p.lo], bk.flat(grads[p.name])[p.lo : p.hi])
        return sent

    def _buckets(self, world: int) -> tuple[Bucket, ...]:
        """The stage's buckets in a ring of `world`: parameters in the order the weight
        gradients finish them (the lowering's W calls), cut by `bucket_bytes`."""
        if world not in self._bucket_plans:
            prog = self.prog
            var = prog.graph.var
            params = [(n, int(prog.grads[n].size), var(n).layer) for n in prog.grad_order]
            self._bucket_plans[world] = plan_buckets(
                params,
                prog.dtype.itemsize,
                world,
                self.bucket_bytes,
                prog.block_ends,
                prog.grad_spans,
            )
        return self._bucket_plans[world]

    def set_bucket_bytes(self, bucket_bytes: int) -> None:
        """Cut the gradients into buckets of `bucket_bytes` from the next all-reduce on (every
        replica of a ring must use the same). A gradient's row blocks stay as the program was
        built with (a bucket may still close at their ends)."""
        self.bucket_bytes = int(bucket_bytes)
        self._bucket_plans = {}

    def buckets(self, world: int) -> tuple[Bucket, ...]:
        """The buckets this stage's gradients are all-reduced in, in a ring of `world`."""
        return self._buckets(world)

    def _allreduce_buffer(self) -> np.ndarray:
        """The buffer the ring sums: the gradients' own where they are host arrays (no copy,
        no memory of its own), else a host buffer of their bytes (host memory: the device's
        ledger does not hold it)."""
        if self._flat is None:
            prog = self.prog
            if isinstance(prog.flat_grads, np.ndarray):
                self._flat = prog.flat_grads
            else:
                self._flat = np.zeros(int(prog.flat_grads.size), prog.dtype)
        return self._flat
