"""Analytic memory model: bytes per stage by category, for training and for inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from graphpart.errors import PlanError
from graphpart.ir.graph import BATCH, Graph
from graphpart.ir.lower import CATEGORIES, LABEL_DTYPE, lower
from graphpart.ir.lower import saved_values as lower_saved_values
from graphpart.ir.ops import get
from graphpart.ir.sizes import flat_elements, nbytes
from graphpart.plan import schedule as sch
from graphpart.plan.batching import microbatch_rows
from graphpart.plan.prediction import DATA_PARALLEL, Buffer, MemoryPrediction, StageMemory
from graphpart.plan.stages import Plan, Stage, build_stage, layer_flops
from graphpart.plan.workload import Workload, optimizer_slots
from graphpart.units import human_bytes

__all__ = [
    "CATEGORIES",
    "Workload",
    "LABEL_DTYPE",
    "Buffer",
    "MemoryPrediction",
    "DATA_PARALLEL",
    "StageMemory",
    "budget_problem",
    "optimizer_slots",
    "param_bytes",
    "predict",
    "predict_data_parallel",
    "predict_inference",
    "saved_values",
    "stage_buffers",
    "stage_memory",
    "stage_memory_cost",
    "training_vs_inference",
]


# -- the executor's buffers, from the lowering it runs -------------------------------------------
def saved_values(graph: Graph, recompute: bool = False) -> list[str]:
    """Values one micro-batch keeps until its backward (graphpart.ir.lower.saved_values)."""
    return list(lower_saved_values(graph, recompute))


def stage_buffers(
    graph: Graph,
    *,
    output: str | None,
    input_grad: bool,
    rows: int,
    in_flight: int,
    optimizer_slots: int,
    dtype: Any = "float32",
    recompute: bool = False,
    pending: int = 0,
    whole: bool = True,
) -> list[Buffer]:
    """Every buffer a stage worker allocates over a run, with the ledger's names and categories.

    `graph` is the stage's sub-graph (Stage.graph). The buffers are the lowering's
    (graphpart.ir.lower.Lowered.buffers), which workers/program.py allocates: parameters and
    their gradients; `optimizer_slots` state buffers per parameter; `in_flight` slots of the
    saved values; one shared workspace buffer per other value the forward touches; one
    cotangent buffer per alias root (boundary for the stage input and output, workspace
    otherwise). Each holds `rows` rows. (Weight gradients of several micro-batches accumulate
    in the gemm itself, beta = 1: no temporaries.) Where the schedule splits backwards into I
    and W (zero-bubble), `pending` pending slots hold what a deferred W reads (category
    "activation": the cotangents of each layer's pre-activation, and under recompute the
    values W reads); the cotangents W reads are shared buffers too only where the stage also
    runs `whole` backwards (B).
    """
    low = lower(graph, output=output, input_grad=input_grad, recompute=recompute)
    specs = low.buffers(
        in_flight=in_flight, optimizer_slots=optimizer_slots, pending=pending, whole=whole
    )
    return [Buffer(b.name, b.category, b.nbytes(rows, dtype)) for b in specs]


def schedule_counts(actions: Sequence[sch.Action]) -> dict[str, Any]:
    """What one stage's action list asks of its buffers: slots of saved values (F to B or W),
    pending slots (I to W), whether it runs whole backwards (B)."""
    return {
        "in_flight": sch.peak_in_flight(actions),
        "pending": sch.peak_pending(actions),
        "whole": any(a.kind == "B" for a in actions),
    }


def stage_memory(stage: Stage, n_stages: int, w: Workload) -> StageMemory:
    """Predicted peak bytes of `stage` when it is stage `stage.index` of `n_stages`."""
    rows = w.rows
    counts = schedule_counts(sch.make(w.schedule, n_stages, w.microbatches)[stage.index])
    bufs = stage_buffers(
        stage.graph,
        output=stage.output,
        input_grad=stage.index > 0,
        rows=rows,
        optimizer_slots=w.slots,
        dtype=w.dtype,
        recompute=w.recompute,
        **counts,
    )
    return StageMemory(stage.index, rows, counts["in_flight"], tuple(bufs))


def channel_bytes(width: int, rows: int, itemsize: int) -> int:
    """Capacity of one shared-memory channel (the `shm` transport): a whole minibatch of one
    direction's boundary tensors, plus 64 bytes of alignment a row."""
    return rows * width * itemsize + 64 * rows


def ring_channel_bytes(grad_bytes: int, world: int, itemsize: int = 1) -> int:
    """Capacity of one ring all-reduce channel: what a replica sends its right neighbour in a
    step. The gradients (grad_bytes, elements of `itemsize` bytes) are cut into `world`
    chunks, the largest ceil(n / world) elements; the reduce-scatter and the all-gather each
    send world - 1 of them; plus 64 bytes of alignment a message (2 world of them, a margin).
    A step writes all of it, so these are the pages the channel really occupies (measured:
    2 replicas of wide, 46.6 MiB shared for two channels of 22.7 MiB each)."""
    n = int(grad_bytes) // int(itemsize)
    chunk = -(-n // int(world)) * int(itemsize)
    return 2 * (int(world) - 1) * chunk + 64 * 2 * int(world)


def channel_buffers(plan: Plan, index: int, batch: int, dtype: Any) -> tuple[Buffer, ...]:
    """The channel buffers stage `index` maps on the `shm` transport (neighbours and the driver
    on one node): from and to each neighbour, one buffer a direction, and on stage 0 the
    driver's feed of micro-batch inputs; each a whole minibatch wide (every micro-batch has its
    own region, so a step touches every page). The ledger's names."""
    size = np.dtype(dtype).itemsize

    def width(k: int) -> int:
        st = plan.stages[k]
        return int(np.prod([d for d in st.graph.var(st.output).shape if d != BATCH]))

    out, n_in = [], 0
    if index == 0:  # the driver writes the micro-batch inputs into a channel too
        first = plan.stages[0].graph.inputs[0]
        width_in = int(np.prod([d for d in first.shape if d != BATCH]))
        out.append(Buffer("channel:feed", "boundary", channel_bytes(width_in, batch, size)))
    for k, side in ((index - 1, "prev"), (index, "next")):  # the output of stage k crosses
        if 0 <= k < plan.k - 1:
            nbytes = channel_bytes(width(k), batch, size)
            out += [
                Buffer(f"channel:in{n_in}", "boundary", nbytes),
                Buffer(f"channel:to_{side}", "boundary", nbytes),
            ]
            n_in += 1
    return tuple(out)


def predict(plan: Plan, w: Workload, *, channels: bool = False) -> MemoryPrediction:
    """Peak bytes per stage and category of training `plan` on workload `w` (no workers).

    parameter, gradient: the stage's parameter bytes each; optimizer: state slots x parameter
    bytes; activation: the saved values of one micro-batch x the schedule's peak in-flight
    count, plus under a zero-bubble schedule what a deferred W reads x the most micro-batches
    between their I and W; boundary: dJ/d(stage input) (stages > 0) and the received
    dJ/d(stage output) (all but the last; under a zero-bubble schedule it is W-read, so
    pending), and with `channels` (the `shm` transport) the shared-memory channel
    buffers to and from each neighbour; workspace: shared buffers of unsaved values and
    cotangents. Buffers hold ceil(batch / microbatches) rows; channels a whole minibatch.
    """
    stages = tuple(stage_memory(st, plan.k, w) for st in plan.stages)
    if channels:
        stages = tuple(
            replace(sm, buffers=sm.buffers + channel_buffers(plan, sm.index, w.batch, w.dtype))
            for sm in stages
        )
    return MemoryPrediction(
        stages,
        int(w.batch),
        int(w.microbatches),
        w.schedule,
        w.optimizer_name,
        np.dtype(w.dtype).name,
        bool(w.recompute),
    )


def param_bytes(graph: Graph, dtype: Any = "float32") -> int:
    """Bytes of all of `graph`'s parameters in `dtype` (one copy: weights, or their gradients)."""
    return sum(nbytes(v.shape, 1, dtype) for v in graph.params)


def grad_buffer_bytes(graph: Graph, dtype: Any = "float32") -> int:
    """Bytes of the one buffer a worker holds `graph`'s gradients in, each aligned
    (graphpart.ir.sizes.flat_elements): what its all-reduce sums."""
    size = np.dtype(dtype).itemsize
    return flat_elements([nbytes(v.shape, 1, dtype) for v in graph.params], size) * size


def predict_data_parallel(
    plan: Plan, replicas: int, w: Workload, *, channels: bool = False
) -> MemoryPrediction:
    """Peak bytes per device of data parallelism: `replicas` copies of the whole model, or
    (a plan of K > 1 stages) of a K-stage pipeline, R x K workers.

    One stage (K = 1): of `w`, the batch, micro-batches, optimizer and dtype count. Each
    replica takes ceil(batch / replicas) rows as M = min(w.microbatches, those rows)
    micro-batches (gradient accumulation in the replica; graphpart.engines.DataParallel),
    without recomputation, so it holds what `predict(plan, Workload(ceil(batch / replicas),
    M))` names (activations and workspace of one micro-batch of ceil(ceil(batch / replicas) /
    M) rows); the ring all-reduce sums the gradients in place (a worker's gradients are one
    buffer), so it adds no buffer of its own (a GPU worker's host staging buffer is host
    memory, not the device's). Returns one
    StageMemory per replica (index = replica; all equal) in a MemoryPrediction whose `batch` is
    the whole minibatch, `microbatches` M (per replica) and `schedule` DATA_PARALLEL; its
    `total` is the sum over the replicas. With `channels` (the ring on shared memory, replicas
    on one node, R > 1) each replica also maps the channel from its left neighbour and the one
    to its right (`ring_channel_bytes` each) and the driver's feed of its micro-batch inputs.

    K > 1 stages (the 2-D layout): worker (r, k) holds what `predict` gives stage k at
    ceil(batch / replicas) rows in M micro-batches with `w`'s schedule and recomputation (with
    `channels`, the pipeline's and the feed's shared-memory channels), plus, with `channels`
    and R > 1, its ring channels
    in (numbered after the pipeline's) and to the right, `ring_channel_bytes` of those bytes.
    StageMemory index r K + k, replica-major; `schedule` is w's and `replicas` R.
    """
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise PlanError(f"replicas={replicas!r}: must be a positive integer")
    batch, dtype = w.batch, w.dtype
    if replicas > batch:
        raise PlanError(
            f"replicas={replicas} exceeds the batch of {batch} rows; each replica needs a row "
            f"(use 1..{batch})"
        )
    rows = microbatch_rows(batch, replicas)
    m = min(max(1, int(w.microbatches)), rows)  # a replica's micro-batches
    size = np.dtype(dtype).itemsize
    name, dt = w.optimizer_name, np.dtype(dtype).name
    if plan.k > 1:
        base = predict(plan, replace(w, batch=rows, microbatches=m), channels=channels)
        stages = []
        for r in range(replicas):
            for sm in base.stages:
                grads = grad_buffer_bytes(plan.stages[sm.index].graph, dtype)
                bufs = sm.buffers
                if channels and replicas > 1:
                    ring = ring_channel_bytes(grads, replicas, size)
                    n_in = sum(b.name.startswith("channel:in") for b in sm.buffers)
                    bufs += (
                        Buffer(f"channel:in{n_in}", "boundary", ring),
                        Buffer("channel:to_right", "boundary", ring),
                    )
                stages.append(StageMemory(r * plan.k + sm.index, sm.rows, sm.in_flight, bufs))
        return MemoryPrediction(
            tuple(stages), int(batch), m, base.schedule, name, dt, base.recompute, replicas
        )
    one = predict(
        plan, replace(w, batch=rows, microbatches=m, schedule="1f1b", recompute=False)
    ).stages[0]
    bufs = one.buffers
    if channels and replicas > 1:  # the driver's feed, the ring from the left and to the right
        ring = ring_channel_bytes(grad_buffer_bytes(plan.graph, dtype), replicas, size)
        bufs += channel_buffers(plan, 0, rows, dtype) + (
            Buffer("channel:in0", "boundary", ring),
            Buffer("channel:to_right", "boundary", ring),
        )
    stages1 = tuple(StageMemory(r, one.rows, one.in_flight, bufs) for r in range(replicas))
    return MemoryPrediction(stages1, int(batch), m, DATA_PARALLEL, name, dt, False, replicas)


def budget_problem(pred: MemoryPrediction, budget: int) -> str | None:
    """None when every device's predicted total fits in `budget` bytes; else one line naming
    the fullest device, what it needs by (non-zero) category, and the budget:
    "does not fit: needs 81.20 MiB on device 0 (parameter 20.00 MiB, ...), budget 64.00 MiB".

    A device is a pipeline stage (device k runs stage k) or a data-parallel replica.
    """
    worst = max(pred.stages, key=lambda s: (s.total, -s.index))
    if worst.total <= budget:
        return None
    parts = ", ".join(f"{c} {human_bytes(n)}" for c, n in worst.bytes.items() if n)
    return (
        f"does not fit: needs {human_bytes(worst.total)} on device {worst.index} ({parts}), "
        f"budget {human_bytes(budget)}"
    )


# -- inference ----------------------------------------------------------------------------------
def predict_inference(graph: Graph, batch: int, dtype: Any = "float32") -> int:
    """Bytes of an inference forward pass: parameters plus the most activations alive at once.

    Walks the tensor ops in order (the loss is not evaluated): an op's output is allocated
    while its inputs are still alive, and a value is freed after its last consumer; the
    input x is alive from the start, the final output until the end.
    """
    dt = np.dtype(dtype)
    params = sum(nbytes(v.shape, batch, dt) for v in graph.params)
    ops = [o for o in graph.ops if get(o.op).kind == "tensor"]
    last_use: dict[str, int] = {}
    for i, o in enumerate(ops):
        for n in o.inputs:
            last_use[n] = i
    size = {v.name: nbytes(v.shape, batch, dt) for v in graph.vars if v.role in ("input", "value")}
    live = {v.name for v in graph.inputs}
    peak = cur = sum(size[n] for n in live)
    for i, o in enumerate(ops):
        live.add(o.output)
        cur += size[o.output]
        peak = max(peak, cur)
        for n in o.inputs:
            if n in live and last_use.get(n) == i:
                live.discard(n)
                cur -= size[n]
    return params + peak


def training_vs_inference(plan: Plan, w: Workload) -> str:
    """One line: how many times the memory of inference training needs (all stages summed)."""
    train = predict(plan, w).total
    infer = predict_inference(plan.graph, w.batch, w.dtype)
    return (
        f"training needs {train / infer:.1f}x the memory of inference for this model and "
        f"batch ({train / 2**20:.2f} MiB vs {infer / 2**20:.2f} MiB)"
    )


# -- partitioning by memory ---------------------------------------------------------------------
def stage_memory_cost(
    graph: Graph, stages: int, w: Workload | None = None
) -> Callable[[int, int, int], float]:
    """cost(start, stop, k): predicted bytes of stage k of `stages` holding layers[start:stop].

    For graphpart.plan.partition.partition(graph, stages, "memory", memory_cost=...); the stage
    index matters because under 1F1B stage k holds min(stages - k, microbatches) micro-batches.
    """
    layers = graph.layers
    flops = layer_flops(graph)
    w = w or Workload(batch=64)
    slots, rows = w.slots, w.rows
    counts = [schedule_counts(a) for a in sch.make(w.schedule, stages, w.microbatches)]
    built: dict[tuple[int, int], Stage] = {}
    cache: dict[tuple[int, int, int], float] = {}

    def boundary_in(start: int) -> str | None:
        if start == 0:
            return None
        prev = layers[start - 1]
        return [o for o in graph.ops if o.layer == prev][-1].output

    def cost(start: int, stop: int, k: int) -> float:
        key = (start, stop, k)
        if key not in cache:
            if (start, stop) not in built:
                built[start, stop] = build_stage(
                    graph,
                    k,
                    tuple(layers[start:stop]),
                    boundary_in(start),
                    stop == len(layers),
                    flops,
                )
            st = built[start, stop]
            bufs = stage_buffers(
                st.graph,
                output=st.output,
                input_grad=start > 0,
                rows=rows,
                optimizer_slots=slots,
                dtype=w.dtype,
                recompute=w.recompute,
                **counts[k],
            )
            cache[key] = float(sum(b.nbytes for b in bufs))
        return cache[key]

    return cost
