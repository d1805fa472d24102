"""The memory model of virtual stages (graphpart/plan/virtual_memory.py) equals the workers'
ledgers.

Contract. For interleaved 1F1B (v = 1, 2, 3) and ZB-V, K in {1, 2, 3}, M in {1, 3, 4}, with
and without recompute, SGD with momentum and Adam (the fast lane: K = 2, M = 3 and K = 3, M =
4 with recompute; the slow lane all): after two training steps in process, each
virtual stage's worker holds exactly the buffers `chunk_memory` names (same names, categories
and bytes; its peak by category and in total), and each device's predicted peak
(`predict_virtual`) is the sum of its chunks' ledgers; the device's buffers are its chunks'
under "s<stage>:"; `predict_schedule` dispatches one-stage schedules to `memory.predict`. On
`shm` the channels are counted too: each chunk maps one channel a direction for each boundary
it shares with another device (none at the V's turn), stage 0 the driver's feed, and the
ledgers equal the prediction with channels.
"""

from __future__ import annotations

import numpy as np
import pytest

from graphpart.engines import Engine
from graphpart.ir import mlp
from graphpart.optim import SGD, Adam
from graphpart.params import init_params
from graphpart.plan import memory
from graphpart.plan.partition import partition
from graphpart.plan.virtual_memory import chunk_memory, predict_schedule, predict_virtual
from graphpart.plan.workload import Workload

SIZES = [6, 5, 4, 5, 4, 5, 4, 5, 4, 3]  # nine layers
BATCH = 8
OPTIMIZERS = {"momentum": SGD(lr=0.01, momentum=0.9), "adam": Adam(lr=0.01)}
CASES = [("interleaved", 1), ("interleaved", 2), ("interleaved", 3), ("zbv", 2)]


def _run(plan, opt, schedule, v, m, recompute, transport="inprocess"):
    e = Engine(
        plan,
        init_params(plan.graph, 0, "float32"),
        opt,
        microbatches=m,
        schedule=schedule,
        chunks=v,
        max_rows=BATCH,
        recompute=recompute,
        keep_events=False,
        transport=transport,
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2 * BATCH, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], 2 * BATCH)
    for s in range(2):
        e.step(x[s * BATCH : (s + 1) * BATCH], y[s * BATCH : (s + 1) * BATCH])
    return e


def _check(e, plan, w, channels=False):
    chunks = chunk_memory(plan, w, channels=channels)
    snaps = [st.memory for st in e.stats()]
    for s, (snap, want) in enumerate(zip(snaps, chunks, strict=True)):
        assert snap.entries == want.entries(), f"virtual stage {s}"
        assert snap.peak == want.bytes and snap.peak_total == want.total, s
    pred = predict_virtual(plan, w, channels=channels)
    held = [[s for s in range(plan.k) if pred_owner(e, s) == d] for d in range(len(pred.stages))]
    for d, dev in enumerate(pred.stages):
        assert dev.total == sum(snaps[s].peak_total for s in held[d]), f"device {d}"
        assert len(dev.buffers) == sum(len(chunks[s].buffers) for s in held[d])
        assert all(b.name.split(":", 1)[0] in {f"s{s}" for s in held[d]} for b in dev.buffers)


def pred_owner(e, s):
    return e.placement.owner[s]


def _check_case(schedule, v, k, m, recompute):
    plan = partition(mlp(SIZES), k * v, "uniform")
    name = "adam" if (m + recompute) % 2 else "momentum"
    e = _run(plan, OPTIMIZERS[name], schedule, v, m, recompute)
    w = Workload(BATCH, m, schedule, OPTIMIZERS[name], recompute=recompute, chunks=v)
    _check(e, plan, w)
    e.close()


@pytest.mark.parametrize(("schedule", "v"), CASES)
def test_prediction_equals_the_ledgers(schedule, v):
    _check_case(schedule, v, 2, 3, recompute=False)
    _check_case(schedule, v, 3, 4, recompute=True)


@pytest.mark.slow  # every K, M and recompute setting: the slow lane
@pytest.mark.parametrize(("schedule", "v"), CASES)
def test_prediction_equals_the_ledgers_everywhere(schedule, v):
    for k in (1, 2, 3):
        for m in (1, 3, 4):
            for recompute in (False, True):
                _check_case(schedule, v, k, m, recompute)


def test_one_stage_schedules_dispatch_to_the_stage_model():
    plan = partition(mlp(SIZES), 3)
    w = Workload(BATCH, 4, "zb-h1")
    assert predict_schedule(plan, w) == memory.predict(plan, w)
    virtual = predict_schedule(partition(mlp(SIZES), 4), Workload(BATCH, 4, "zbv"))
    assert len(virtual.stages) == 2 and virtual.schedule == "zbv"


def test_channels_only_where_a_boundary_crosses_devices():
    """ZB-V, K = 2: stage 1 -> 2 is device 1's turn (no channel), 0 -> 1 and 2 -> 3 cross."""
    plan = partition(mlp(SIZES), 4, "uniform")
    chunks = chunk_memory(plan, Workload(BATCH, 2, "zbv"), channels=True)
    names = [sorted(n for n in c.entries() if n.startswith("channel:")) for c in chunks]
    assert names == [
        ["channel:feed", "channel:in0", "channel:to_next"],
        ["channel:in0", "channel:to_prev"],
        ["channel:in0", "channel:to_next"],
        ["channel:in0", "channel:to_prev"],
    ]


@pytest.mark.ray
def test_shm_ledgers_equal_the_prediction_with_channels(ray_session):
    for schedule, v, k, m in (("interleaved", 2, 2, 3), ("zbv", 2, 2, 4)):
        plan = partition(mlp(SIZES), k * v, "uniform")
        e = _run(plan, OPTIMIZERS["adam"], schedule, v, m, False, transport="shm")
        try:
            w = Workload(BATCH, m, schedule, "adam", chunks=v)
            _check(e, plan, w, channels=True)
        finally:
            e.close()
