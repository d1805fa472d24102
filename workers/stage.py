"""The stage worker: one stage's parameters, optimizer state, activation cache and step (no Ray)."""

from __future__ import annotations

import math
import os
import platform
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import psutil

from graphpart.ir.graph import Graph
from graphpart.optim import SGD, Adam, Optimizer
from graphpart.params import Params, materialize, params_dtype
from workers import alloc, state_file, traced
from workers.backends import get_backend
from workers.buckets import (
    DEFAULT_BUCKET_BYTES,
    Bucket,
    Ready,
)
from workers.hwm import read_hwm, read_rss_parts, reset_hwm
from workers.ledger import Ledger
from workers.program import Program
from workers.reduction import MARKS_KEPT, GradientReduction
from workers.stats import Busy, DeviceMemory, Finish, ReduceMark, Rss, StageStats
from workers.warmup import warm_up


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a stage worker is built from: what a transport sends to start one."""

    graph: Graph
    params: Params
    optimizer: Optimizer
    output: str | None
    input_grad: bool
    max_rows: int
    index: int = 0
    device: str = "cpu"
    recompute: bool = False
    keep_events: bool = True
    batch_rows: int = 0  # rows of the largest minibatch the engine was built for (0: max_rows)
    trace_allocations: bool = False  # tracemalloc in the worker's process (workers/traced.py)
    bucket_bytes: int = DEFAULT_BUCKET_BYTES  # data parallelism: all-reduce buckets (buckets.py)
    replicated: bool = False  # a data-parallel replica: its last weight gradient in row blocks

    def warm(self) -> None:
        """This stage's warm-up (workers/warmup.py) ahead of building it, so that a device of
        virtual stages has run every chunk's before its first chunk takes its baseline (a
        later chunk's kernels and BLAS shapes would otherwise count as that device's growth);
        then `build(warm=False)`."""
        if self.device == "cpu":
            dtype, bk = params_dtype(self.params), get_backend(self.device)
            warm_up(
                self.graph, bk, self.optimizer, dtype, self.output, self.input_grad, self.max_rows
            )

    def build(self, warm: bool = True) -> StageWorker:
        """The worker; `warm=False` where `warm()` already ran in this process."""
        return StageWorker(
            self.graph,
            self.params,
            self.optimizer,
            output=self.output,
            input_grad=self.input_grad,
            max_rows=self.max_rows,
            index=self.index,
            device=self.device,
            recompute=self.recompute,
            keep_events=self.keep_events,
            trace_allocations=self.trace_allocations,
            bucket_bytes=self.bucket_bytes,
            replicated=self.replicated,
            warm=warm,
        )


class StageWorker(GradientReduction):
    """Runs forward/backward of micro-batches for one stage and applies the optimizer.

    Everything it holds is in its ledger, by category. Arrays it returns are host arrays
    that stay valid until the next call of the same kind (copy them to keep them).
    """

    def __init__(
        self,
        graph: Graph,
        params: Params,
        optimizer: Optimizer,
        *,
        output: str | None,
        input_grad: bool,
        max_rows: int,
        index: int = 0,
        device: str = "cpu",
        recompute: bool = False,
        keep_events: bool = True,
        trace_allocations: bool = False,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        replicated: bool = False,
        warm: bool = True,
    ) -> None:
        self.index = index
        self.opt = optimizer
        self.ledger = Ledger(keep_events=keep_events)
        self.bk = get_backend(device)
        if warm and device == "cpu":  # (False: WorkerSpec.warm ran it already)
            dtype = params_dtype(params)
            warm_up(graph, self.bk, optimizer, dtype, output, input_grad, max_rows)
        alloc.settle(fixed_threshold=True)  # freed memory leaves the resident set from here on
        self._proc = psutil.Process()
        self.rss_baseline = self.rss_peak = self._proc.memory_info().rss
        self.rss_parts_baseline = read_rss_parts()
        # the kernel keeps the peak from here on (VmHWM), so no call needs to sample it; where
        # the mark cannot be reset, `finish` samples once a step
        self._hwm = reset_hwm()
        if trace_allocations:  # profiling: NumPy's arrays as tracemalloc counts them
            traced.start()
        params = materialize(graph, params)
        self.prog = Program(
            graph,
            params,
            self.bk,
            max_rows,
            self.ledger,
            output=output,
            recompute=recompute,
            input_grad=input_grad,
            name=f"stage {index}",
            # a replica's last weight gradient in row blocks of a bucket each, all-reduced
            # block by block during its backward (the overlap runs on the host's kernels)
            split_bytes=bucket_bytes if replicated and device == "cpu" else 0,
        )
        del params  # copied into the program's buffers: freed before the optimizer state
        self.state: dict[str, list[Any]] = {}
        for name in self.prog.params:
            self.state[name] = [
                self.prog._alloc(self.prog.lowered.optimizer_buffer(i, name), zero=True)
                for i in range(optimizer.state_slots)
            ]
        self.steps = 0
        self.busy = Busy()
        self.bytes_sent = 0
        self.bytes_received = 0
        self._flat: np.ndarray | None = None  # the all-reduce buffer (data parallelism only)
        self.bucket_bytes = int(bucket_bytes)
        self._bucket_plans: dict[int, tuple[Bucket, ...]] = {}  # by ring size
        self._armed: Ready | None = None  # an overlapped all-reduce under way (arm_reduce)
        self._compute_end = 0.0  # when the last backward or W call ended (perf_counter)
        self._polled = self._polled_cpu = 0.0  # seconds the buckets advanced in the backward
        self._last_poll = 0.0  # the length of the last advance
        self._polled_at_arm = 0.0  # _polled when this step's all-reduce was armed
        self.reduce_marks: deque[ReduceMark] = deque(maxlen=MARKS_KEPT)
        self.pid = os.getpid()

    # -- one micro-batch ------------------------------------------------------------------------
    def forward(
        self, mb: int, x: np.ndarray, y: np.ndarray | None = None, scale: float = 1.0
    ) -> np.ndarray | None:
        t, c = time.perf_counter(), time.thread_time()
        self.bytes_received += x.nbytes if self.prog.input_grad else 0  # from a neighbour
        with np.errstate(all="ignore"):  # the driver checks J; no warning per overflow
            out = self.prog.forward(mb, x, y, scale)
        if out is not None:
            out = self.bk.to_host(out)
            self.bytes_sent += out.nbytes
        cpu = time.thread_time() - c  # read first: the CPU window lies inside the wall's
        self.busy.forward += time.perf_counter() - t
        self.busy.compute_cpu += cpu
        return out

    def backward(
        self, mb: int, g: np.ndarray | None = None, scale: float = 1.0
    ) -> np.ndarray | None:
        return self._backward(self.prog.backward, mb, g, scale)

    def backward_input(
        self, mb: int, g: np.ndarray | None = None, scale: float = 1.0
    ) -> np.ndarray | None:
        """The input-gradient half of `backward` (I): dJ/d(input), sent to the previous stage;
        what the weight gradients read is kept until `backward_weight(mb)`."""
        return self._backward(self.prog.backward_input, mb, g, scale)

    def _backward(
        self, run: Callable[..., Any], mb: int, g: np.ndarray | None, scale: float
    ) -> np.ndarray | None:
        """A backward (whole, or its I) of micro-batch `mb`: the received cotangent `g` in,
        the input's cotangent out (a host array), timed and counted."""
        if g is not None:
            self.bytes_received += g.nbytes

        def call() -> np.ndarray | None:
            din = run(mb, g, scale)
            return None if din is None else self.bk.to_host(din)

        din, _ = self._timed(call)
        if din is not None:
            self.bytes_sent += din.nbytes
        return din

    def backward_weight(self, mb: int, scale: float = 1.0) -> None:
        """The weight-gradient half of `backward` (W) of micro-batch `mb`, after its I."""
        _, dt = self._timed(lambda: self.prog.backward_weight(mb, scale))
        self.busy.weight += dt

    def _timed(self, call: Callable[[], Any]) -> tuple[Any, float]:
        """Run a backward call (B, I or W); its result and its compute's seconds, which the
        busy clocks get: its wall and CPU time less what the all-reduce's buckets took inside
        it, between its kernel calls (`Busy.polled`: the overlap's work, workers/reduction.py)."""
        t, c = time.perf_counter(), time.thread_time()
        p, pc = self._polled, self._polled_cpu
        with np.errstate(all="ignore"):
            out = call()
        cpu = time.thread_time() - c  # read first: the CPU window lies inside the wall's
        end = time.perf_counter()
        polled, polled_cpu = self._polled - p, self._polled_cpu - pc
        # the compute ended before the buckets' last advance, if the call ended with one
        self._compute_end = end - self._last_poll if polled else end
        dt = end - t - polled
        self.busy.backward += dt
        self.busy.compute_cpu += cpu - polled_cpu
        self.busy.polled += polled
        return out, dt

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Inference forward of up to max_rows rows (no cache, no loss); a host array copy."""
        with np.errstate(all="ignore"):
            out = self.prog.infer(x)
        return np.array(self.bk.to_host(out))

    # -- one step -------------------------------------------------------------------------------
    def finish(self, update: bool = True) -> Finish:
        """End a step: add the regulariser's gradient, then (if `update`) the optimizer step.

        Returns this stage's data loss (summed over its micro-batches, already scaled) and
        its part of the regulariser s.
        """
        t = time.perf_counter()
        with np.errstate(all="ignore"):
            s = self.prog.regularize()
        self.prog.finish_grads()
        loss = self.prog.loss_sum
        if update:
            self.steps += 1
            with np.errstate(all="ignore"):
                self._update()
            self.prog.zero_grad()
            self.ledger.mark("step", str(self.steps))
        self.busy.finish += time.perf_counter() - t
        if not self._hwm:
            self._sample_rss()
        return Finish(float(loss), float(s))

    def _sample_rss(self) -> None:
        self.rss_peak = max(self.rss_peak, self._proc.memory_info().rss)
        if self._hwm:
            self.rss_peak = max(self.rss_peak, read_hwm() or 0)

    def rss(self) -> Rss:
        """Resident memory of this process (see Rss)."""
        self._sample_rss()
        return Rss(
            baseline=self.rss_baseline,
            peak=self.rss_peak,
            current=self._proc.memory_info().rss,
            hwm=read_hwm(),
            peak_from="VmHWM" if self._hwm else "samples",
            parts_baseline=self.rss_parts_baseline,
            parts_now=read_rss_parts(),
        )

    def zero_grad(self) -> None:
        """Drop this step's gradients and loss without updating (after `finish(update=False)`)."""
        self.prog.zero_grad()

    def _update(self) -> None:
        bk, opt = self.bk, self.opt
        for name, w in self.prog.params.items():
            g, st = bk.flat(self.prog.grads[name]), [bk.flat(a) for a in self.state[name]]
            if isinstance(opt, SGD):
                v = st[0] if st else g  # not read when momentum == 0
                bk.sgd_update(bk.flat(w), g, v, opt.lr, opt.momentum, opt.weight_decay)
            elif isinstance(opt, Adam):
                bk.adam_update(
                    bk.flat(w),
                    g,
                    st[0],
                    st[1],
                    opt.lr,
                    opt.beta1,
                    opt.beta2,
                    opt.eps,
                    self.steps,
                    opt.weight_decay,
                )

    # -- state ----------------------------------------------------------------------------------
    def get_params(self, copy: bool = True) -> dict[str, np.ndarray]:
        return self.prog.get_params(copy)

    def get_grads(self) -> dict[str, np.ndarray]:
        return self.prog.get_grads()

    def get_state(self, copy: bool = True) -> dict[str, Any]:
        """Parameters, optimizer state and step count (for checkpoints): copies, or with
        copy=False the live host arrays, for a caller that serialises them before the next
        step (the Ray actor: a copy more of a stage's whole state would sit in its process)."""
        take = np.array if copy else np.asarray
        return {
            "params": self.get_params(copy),
            "opt": {k: [take(self.bk.to_host(a)) for a in v] for k, v in self.state.items()},
            "steps": self.steps,
        }

    def write_state(self, path: str, host: str, params_only: bool = False) -> bool:
        """Write the state (or only the parameters) to `path` (workers/state_file.py) if this
        process runs on `host`, the caller's machine; False (nothing written) elsewhere, where
        the caller cannot read the file and asks `get_state` instead."""
        if os.uname().nodename != host:
            return False
        st = self.get_state(copy=False)
        state_file.write(path, {**st, "opt": {}} if params_only else st)
        return True

    def read_state(self, path: str, host: str) -> bool:
        """`set_state` from the file at `path`, if this process runs on `host` (else False)."""
        if os.uname().nodename != host:
            return False
        self.set_state(state_file.read(path))
        return True

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.prog.set_params(state["params"])
        for k, arrays in state.get("opt", {}).items():
            for dst, src in zip(self.state[k], arrays, strict=True):
                self.bk.from_host(np.asarray(src, dtype=self.prog.dtype), dst)
        self.steps = int(state.get("steps", 0))

    def stats(self) -> StageStats:
        return StageStats(
            stage=self.index,
            pid=self.pid,
            busy=replace(self.busy),
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            slots=len(self.prog.slots),
            memory=self.ledger.snapshot(),
            rss=self.rss(),
            device_memory=self._device_memory(),
            traced=traced.read(),
            reduce_marks=tuple(self.reduce_marks),
            node=platform.node(),
        )

    def _device_memory(self) -> DeviceMemory | None:
        """On CUDA: free and total device memory as Numba reports them."""
        if self.bk.name != "cuda":
            return None
        free, total = self.bk.cuda.current_context().get_memory_info()
        if not (math.isfinite(free) and math.isfinite(total)):  # the simulator: unbounded
            return None
        return DeviceMemory(int(free), int(total))

    def events(self) -> list:
        return list(self.ledger.events)

    def ping(self) -> int:
        return self.pid
