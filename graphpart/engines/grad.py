"""The public `value_and_grad`: the lowered stage programs (Numba and BLAS kernels), cached."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from graphpart import api
from graphpart.autodiff import check_batch, check_params
from graphpart.engines.wiring import StepFeed, StepWiring, drive, wire
from graphpart.errors import GraphpartError, PlanError
from graphpart.ir.graph import Graph
from graphpart.plan.batching import microbatch_rows, split_batch
from graphpart.plan.kinds import chunks_for
from graphpart.plan.partition import partition
from graphpart.plan.stages import Plan
from workers.backends import CpuBackend
from workers.program import Program

EXECUTORS = ("fast", "reference")
CACHE_SIZE = 4  # lowered programs kept, least recently used first out

_cache: OrderedDict[tuple[Plan, np.dtype], _Chain] = OrderedDict()
_cache_lock = threading.Lock()


class _Chain:
    """One Program per stage of a plan, for micro-batches of at most `rows` rows."""

    def __init__(self, plan: Plan, params: Mapping[str, np.ndarray], rows: int) -> None:
        bk = CpuBackend()
        self.plan = plan
        self.rows = rows
        self.lock = threading.Lock()
        self.progs = [
            Program(
                st.graph,
                {p: params[p] for p in st.params},
                bk,
                rows,
                output=st.output,
                input_grad=st.index > 0,
                name=f"stage {st.index}",
            )
            for st in plan.stages
        ]
        self.own = [dict(prog.params) for prog in self.progs]  # each program's own buffers

    def run(
        self,
        params: Mapping[str, np.ndarray],
        data: Mapping[str, np.ndarray],
        microbatches: int,
        schedule: str = "1f1b",
        chunks: int = 0,
    ) -> tuple[float, dict[str, np.ndarray]]:
        progs = self.progs
        x = data[progs[0].input]
        n = len(x)
        scale = 1.0 / n
        for prog, own in zip(progs, self.own, strict=True):
            for w, buf in own.items():
                a = params[w]  # read in place where its layout allows, else copied in
                if isinstance(a, np.ndarray) and a.dtype == prog.dtype and a.flags.c_contiguous:
                    prog.params[w] = a
                else:
                    prog.params[w] = buf
                    np.copyto(buf, a)
                prog.grads[w] = np.empty_like(buf)  # fresh: handed to the caller as they are
            prog.zero_grad()

        wiring = _wiring(schedule, len(progs), microbatches, chunks)

        def call(k: int, method: str, *args: Any) -> Any:
            if method != "finish":
                out = getattr(progs[k], method)(*args)
                # a program's output is a view of its buffer until its next call of the kind;
                # one stage a device consumes it before, a device's chunks may not
                return np.array(out) if wiring.virtual and out is not None else out
            s = progs[k].regularize()  # a stage's end of step: its regulariser, once
            progs[k].finish_grads()
            return s, progs[k].loss_sum

        feed = StepFeed(
            xs=[x[r] for r in split_batch(n, microbatches)],
            ys=[data[progs[-1].labels[0]][r] for r in split_batch(n, microbatches)],
            scale=scale,
            update=False,
        )
        try:
            done = drive(wiring, feed, call)[-len(progs) :]
            J = sum(s for s, _ in done)
            grads: dict[str, np.ndarray] = {}
            for (_, loss), prog in zip(done, progs, strict=True):
                J += loss
                grads.update(prog.grads)
        finally:
            for prog, own in zip(progs, self.own, strict=True):
                prog.params.update(own)  # hold no reference to the caller's arrays
        return float(J), {v.name: grads[v.name] for v in self.plan.graph.params}


@lru_cache(maxsize=64)
def _wiring(schedule: str, stages: int, microbatches: int, chunks: int = 0) -> StepWiring:
    """The step a pipeline of `stages` stages runs (by default 1F1B: each stage holds at most
    K micro-batches at once); with virtual stages, stages / chunks devices of `chunks` each."""
    v = chunks_for(schedule, chunks)
    if stages % v:
        raise PlanError(
            f"{stages} stages do not make devices of {v} chunks (schedule {schedule!r}); "
            f"use a multiple of {v} stages"
        )
    return wire(schedule, stages // v, microbatches, v)


@lru_cache(maxsize=64)
def _plan(graph: Graph, stages: int) -> Plan:
    return partition(graph, stages)


def _chain(plan: Plan, params: Mapping[str, np.ndarray], dtype: np.dtype, rows: int) -> _Chain:
    """The cached chain for (plan, dtype), rebuilt larger when `rows` exceed what it holds."""
    key = (plan, dtype)
    with _cache_lock:
        chain = _cache.get(key)
        if chain is None or chain.rows < rows:
            chain = _Chain(plan, params, rows)
            _cache[key] = chain
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return chain


def clear_cache() -> None:
    """Drop every cached program (their buffers go with them)."""
    with _cache_lock:
        _cache.clear()


def value_and_grad(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
    plan: Plan | None = None,
    *,
    stages: int | None = None,
    microbatches: int = 1,
    executor: str = "fast",
    schedule: str = "1f1b",
    chunks: int = 0,
) -> tuple[float, dict[str, np.ndarray]]:
    """J and dJ/dW for every parameter W of `graph`, on `batch` ({"x": X, "y": labels}).

    The arithmetic runs in the parameters' dtype (float32 or float64; the batch is cast to
    it) with the executor the training engine uses: the graph lowered to fused steps, matrix
    products through NumPy's BLAS and the elementwise work in Numba kernels, into buffers
    allocated once. The lowered program is cached per (graph or plan, dtype) and grows to
    the largest batch seen (the last `CACHE_SIZE` are kept), so repeated calls only copy the
    parameters in (not even that when they are C-contiguous in the params' dtype) and hand
    fresh gradient arrays out. The first call in a process loads the kernels from Numba's disk
    cache (1-2 s on a 2-core machine; about 11 s when it compiles them into an empty cache, as
    after installing); later calls take the time of the arithmetic. Calls from several threads
    on the same graph and dtype share one cached program and run one after the other.

    With a `plan` (or `stages`), and `microbatches`, the numbers are computed the way a
    pipeline computes them: each stage its own program, each micro-batch forward through the
    stages then backward, the loss scaled by 1/N of the whole batch, gradients summed over
    micro-batches and each stage's part of the regulariser added once. The results equal the
    reference's to rounding (1e-10 relative in float64, held by the tests). `schedule` (one of
    graphpart.plan.schedule.KINDS) orders each stage's actions as a pipeline would: "zb-h1"
    and "zb-h2" split each backward into its input-gradient and weight-gradient calls;
    "interleaved" and "zbv" take the plan's stages as virtual stages, `chunks` a device (0:
    the schedule's own, 2), and run each device's chunks in its order. The reference ignores
    it (the order changes no value beyond rounding).

    `executor="reference"` computes the same with the reference ops instead
    (`graphpart.api.value_and_grad`: reverse-mode autodiff over the IR in NumPy, or its
    pipelined form), which every other path is tested against.

    >>> import numpy as np
    >>> import graphpart as gp
    >>> g = gp.mlp([4, 8, 3], activation="tanh", bias=True, weight_decay=1e-3)
    >>> params = gp.init_params(g, seed=0, dtype="float64")
    >>> batch = {"x": np.random.default_rng(0).random((6, 4)), "y": np.array([0, 1, 2, 0, 1, 2])}
    >>> J, grads = gp.value_and_grad(g, params, batch)
    >>> sorted(grads), grads["W1"].shape, grads["W1"].dtype
    (['W1', 'W2', 'b1', 'b2'], (8, 4), dtype('float64'))
    >>> J_ref, grads_ref = gp.value_and_grad(g, params, batch, executor="reference")
    >>> bool(abs(J - J_ref) < 1e-12), bool(np.allclose(grads["W2"], grads_ref["W2"]))
    (True, True)
    >>> J2, _ = gp.value_and_grad(g, params, batch, stages=2, microbatches=3)
    >>> bool(abs(J2 - J) < 1e-12)
    True
    """
    if executor not in EXECUTORS:
        raise GraphpartError(f"executor={executor!r}; valid: {', '.join(EXECUTORS)}")
    if executor == "reference":
        return api.value_and_grad(
            graph, params, batch, plan, stages=stages, microbatches=microbatches
        )
    dtype = check_params(graph, params)
    data = check_batch(graph, batch, dtype)
    if plan is None:
        plan = _plan(graph, 1 if stages is None else stages)
    elif plan.graph != graph:
        raise GraphpartError("plan= partitions another graph; pass the graph it was made from")
    n = len(data[graph.inputs[0].name])
    split_batch(n, microbatches)  # a bad count is a one-line PlanError before any work
    _wiring(schedule, plan.k, microbatches, chunks)  # and so is a bad schedule name
    chain = _chain(plan, params, dtype, microbatch_rows(n, microbatches))
    with chain.lock:
        try:
            return chain.run(params, data, microbatches, schedule, chunks)
        except BaseException:  # a program stopped half-way holds a taken slot: start afresh
            with _cache_lock:
                if _cache.get((plan, dtype)) is chain:
                    del _cache[(plan, dtype)]
            raise
