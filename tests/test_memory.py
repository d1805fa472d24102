"""Contract of the analytic memory model (graphpart/plan/memory.py) against the workers' ledgers.

predict(plan, ...) names every buffer a stage worker allocates, with the ledger's name,
category and size, so for K in {1, 2, 4}, every schedule (GPipe, 1F1B and the zero-bubble
ZB-H1 and ZB-H2, whose pending-W slots are counted as activation), M in {1, 2, 4, 8}, SGD with and
without momentum and Adam, bias on and off, recompute on and off, the predicted bytes equal
the ledger's measured peak EXACTLY in every category (and buffer by buffer), in float32 and
float64, whatever the activation and loss. With M >= K, stage 0's activation peak under 1F1B
is K/M of GPipe's. Recompute lowers predicted and measured activation bytes and leaves the
gradients unchanged. predict_inference is parameters plus the largest set of simultaneously
live forward values. stage_memory_cost(start, stop, k) equals the prediction for the stage
make_plan builds; partition(graph, K, "memory") minimises the largest predicted stage total
(brute force over every split), and with budgets that no split fits raises PlanError naming
the missing amount. predict_data_parallel(plan, K) is, on every one of its K devices, the
one-device prediction for ceil(B/K) rows as one micro-batch (the ring all-reduce sums the
gradients' own buffer: no buffer of its own), so parameters, gradients and optimizer state equal
one device's and activations are 1/K of them; it refuses a multi-stage plan and K > B.
budget_problem is None exactly when every device fits, else one line naming the fullest device,
what it needs, its non-zero categories and the budget.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from graphpart.engines import Engine
from graphpart.errors import PlanError
from graphpart.ir import mlp
from graphpart.ir.ops import ACTIVATIONS, LOSSES
from graphpart.ir.sizes import allocated, nbytes
from graphpart.optim import SGD, Adam
from graphpart.params import init_params
from graphpart.plan import memory
from graphpart.plan import schedule as sch
from graphpart.plan.memory import Workload
from graphpart.plan.partition import make_plan, partition
from graphpart.units import human_bytes

SIZES = [16, 32, 24, 20, 10]
BATCH = 16
OPTIMIZERS = {"sgd": SGD(lr=0.01), "momentum": SGD(lr=0.01, momentum=0.9), "adam": Adam()}


def _data(sizes, loss="cross_entropy", dtype="float32", n=BATCH * 2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, sizes[0])).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], n)
    else:
        y = rng.standard_normal((n, sizes[-1])).astype(dtype)
    return x, y


def _engine(
    plan,
    opt,
    M,
    schedule,
    recompute=False,
    dtype="float32",
    steps=2,
    loss="cross_entropy",
    sizes=SIZES,
):
    e = Engine(
        plan,
        init_params(plan.graph, 0, dtype),
        opt,
        microbatches=M,
        schedule=schedule,
        max_rows=BATCH,
        recompute=recompute,
        keep_events=False,
    )
    x, y = _data(sizes, loss, dtype)
    for s in range(steps):
        e.step(x[s * BATCH : (s + 1) * BATCH], y[s * BATCH : (s + 1) * BATCH])
    return e


def _assert_exact(e, pred):
    for k, w in enumerate(e.transport.workers):
        snap = w.ledger.snapshot()
        st = pred.stages[k]
        assert snap.peak == st.bytes, f"stage {k}"
        assert snap.peak_total == st.total
        assert snap.entries == st.entries(), f"stage {k}: buffers differ"
        assert len(w.prog.slots) == st.in_flight
        pending = [b for b in st.buffers if b.name.startswith("pendw[")]
        assert len(w.prog.pending) * len(w.prog.lowered.pending_buffers(0)) == len(pending)


@pytest.mark.slow  # in process, but a second or more: the slow lane
@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("recompute", [False, True])
def test_prediction_equals_measured_peak(K, bias, recompute):
    g = mlp(SIZES, bias=bias, weight_decay=0.01)
    plan = partition(g, K, "uniform")
    for schedule in ("gpipe", "1f1b", "zb-h1", "zb-h2"):
        for M in (1, 2, 4, 8):
            for name, opt in OPTIMIZERS.items():
                e = _engine(plan, opt, M, schedule, recompute)
                pred = memory.predict(
                    plan,
                    Workload(
                        batch=BATCH,
                        microbatches=M,
                        schedule=schedule,
                        optimizer=opt,
                        recompute=recompute,
                    ),
                )
                _assert_exact(e, pred)
                # the optimizer given by name predicts the same
                by_name = memory.predict(
                    plan,
                    Workload(
                        batch=BATCH,
                        microbatches=M,
                        schedule=schedule,
                        optimizer=opt.name,
                        momentum=getattr(opt, "momentum", 0.0),
                        recompute=recompute,
                    ),
                )
                assert [s.bytes for s in by_name.stages] == [s.bytes for s in pred.stages], name


@pytest.mark.parametrize("schedule,recompute", [("zb-h1", True), ("zb-h2", False)])
def test_zero_bubble_prediction_equals_measured_peak(schedule, recompute):
    """Under a split schedule each stage also holds, from a micro-batch's I to its W, a
    pending slot with the cotangents W reads (and, with recompute, the values it reads): the
    most micro-batches between I and W at once (schedule.peak_pending) x one slot's bytes,
    counted as activation; the received cotangent is one of them, so no boundary buffer.
    (Every K, M and optimizer: test_prediction_equals_measured_peak, in the slow lane.)"""
    g = mlp(SIZES, bias=True, weight_decay=0.01)
    for K, M in ((1, 3), (4, 5)):
        plan = partition(g, K, "uniform")
        opt = OPTIMIZERS["momentum"]
        e = _engine(plan, opt, M, schedule, recompute)
        w = Workload(
            batch=BATCH, microbatches=M, schedule=schedule, optimizer=opt, recompute=recompute
        )
        pred = memory.predict(plan, w)
        _assert_exact(e, pred)
        for k, st in enumerate(pred.stages):
            acts = sch.make(schedule, K, M)[k]
            low = e.transport.workers[k].prog.lowered
            one = sum(b.nbytes(w.rows, "float32") for b in low.pending_buffers(0))
            pend = sum(b.nbytes for b in st.buffers if b.name.startswith("pendw["))
            assert pend == sch.peak_pending(acts) * one > 0
            assert not any(b.name == f"dgrad:{low.output}" for b in st.buffers)
        e.close()


@pytest.mark.parametrize(
    "activation,loss", list(zip(ACTIVATIONS, itertools.cycle(reversed(LOSSES)), strict=False))
)
def test_exact_for_other_activations_losses_and_float64(activation, loss):
    sizes = [7, 9, 5, 4]
    g = mlp(sizes, activation=activation, bias=True, loss=loss, weight_decay=0.0)
    for K in (1, 3):
        plan = partition(g, K, "uniform")
        for M, schedule in ((3, "1f1b"), (5, "gpipe")):
            e = _engine(plan, Adam(), M, schedule, dtype="float64", loss=loss, sizes=sizes)
            pred = memory.predict(
                plan,
                Workload(
                    batch=BATCH,
                    microbatches=M,
                    schedule=schedule,
                    optimizer="adam",
                    dtype="float64",
                ),
            )
            _assert_exact(e, pred)


def test_categories_follow_the_rules():
    """Parameters, gradients and optimizer state from parameter counts; activations by slot."""
    g = mlp(SIZES, bias=True)
    plan = partition(g, 2, "uniform")
    pred = memory.predict(
        plan, Workload(batch=BATCH, microbatches=4, schedule="gpipe", optimizer="adam")
    )
    for st, sp in zip(plan.stages, pred.stages, strict=True):
        pbytes = sum(allocated(nbytes(v.shape, 1, "float32")) for v in st.graph.params)  # aligned
        assert pbytes - st.param_count() * 4 <= 128 * len(st.graph.params)
        assert sp.bytes["parameter"] == sp.bytes["gradient"] == pbytes
        assert sp.bytes["optimizer"] == 2 * pbytes
        assert sp.in_flight == 4 and sp.rows == BATCH // 4
        assert sp.bytes["activation"] % sp.in_flight == 0
    first, last = pred.stages
    assert first.bytes["boundary"] == allocated(4 * 4 * SIZES[2])  # received dJ/dh2 only
    assert last.bytes["boundary"] == allocated(4 * 4 * SIZES[2])  # sent dJ/dh2 only
    sgd = memory.predict(
        plan, Workload(batch=BATCH, microbatches=4, schedule="gpipe", optimizer="sgd", momentum=0.0)
    )
    assert all(s.bytes["optimizer"] == 0 for s in sgd.stages)
    assert memory.optimizer_slots("sgd", 0.9) == 1
    assert memory.optimizer_slots("sgd", 0.0) == 0
    assert memory.optimizer_slots("adam") == 2


@pytest.mark.parametrize("K,M", [(2, 4), (2, 8), (4, 4), (4, 8)])
def test_1f1b_holds_at_most_k_over_m_of_gpipe_on_stage0(K, M):
    g = mlp(SIZES, bias=True)
    plan = partition(g, K, "uniform")
    peaks = {}
    for schedule in ("gpipe", "1f1b"):
        e = _engine(plan, Adam(), M, schedule)
        peaks[schedule] = e.transport.workers[0].ledger.peak["activation"]
        pred = memory.predict(plan, Workload(batch=BATCH, microbatches=M, schedule=schedule))
        assert pred.stages[0].bytes["activation"] == peaks[schedule]
    assert peaks["1f1b"] > 0
    assert peaks["1f1b"] <= K / M * peaks["gpipe"]


def test_recompute_saves_activations_and_keeps_gradients():
    g = mlp(SIZES, bias=True, weight_decay=0.01)
    plan = partition(g, 2, "uniform")
    params = init_params(g, 0, "float64")
    x, y = _data(SIZES, dtype="float64")
    grads, measured, predicted = {}, {}, {}
    for rc in (False, True):
        e = Engine(
            plan, params, Adam(), microbatches=4, schedule="gpipe", max_rows=BATCH, recompute=rc
        )
        J, grads[rc] = e.value_and_grad(x[:BATCH], y[:BATCH])
        measured[rc] = [w.ledger.peak["activation"] for w in e.transport.workers]
        predicted[rc] = [
            s.bytes["activation"]
            for s in memory.predict(
                plan,
                Workload(
                    batch=BATCH, microbatches=4, schedule="gpipe", dtype="float64", recompute=rc
                ),
            ).stages
        ]
    assert predicted[True] == measured[True] and predicted[False] == measured[False]
    for k in range(plan.k):
        assert measured[True][k] < measured[False][k]
    for name, g0 in grads[False].items():
        np.testing.assert_allclose(grads[True][name], g0, rtol=1e-12, atol=0)


def test_prediction_reports():
    plan = partition(mlp(SIZES, bias=True), 2, "uniform")
    pred = memory.predict(plan, Workload(batch=BATCH, microbatches=2, schedule="1f1b"))
    d = pred.to_dict()
    assert d["total"] == pred.total == sum(s["total"] for s in d["stages"])
    assert [s["in_flight"] for s in d["stages"]] == [2, 1]
    text = pred.table()
    for c in (*memory.CATEGORIES, "total", "in-flight", "stage 0", "stage 1"):
        assert c in text


def test_microbatches_beyond_batch_is_a_plan_error():
    plan = partition(mlp(SIZES), 2, "uniform")
    with pytest.raises(PlanError, match="microbatches=20 exceeds"):
        memory.predict(plan, Workload(batch=BATCH, microbatches=20, schedule="1f1b"))


def test_inference_memory_is_params_plus_largest_live_set():
    g = mlp([4, 8, 6, 3], bias=False)
    B = 5
    params = (8 * 4 + 6 * 8 + 3 * 6) * 4
    # x->z1 (x, z1 live: 12), z1->h1 (16), h1->z2 (14), z2->h2 (12), h2->o (9) features/row
    assert memory.predict_inference(g, B, "float32") == params + B * 16 * 4
    gb = mlp([4, 8, 6, 3], bias=True)
    # m1 alive with x (12), then m1 + z1 (16), z1 + h1 (16): the peak stays 16 features/row
    bparams = params + (8 + 6 + 3) * 4
    assert memory.predict_inference(gb, B, "float64") == 2 * bparams + B * 16 * 8
    plan = partition(g, 1, "uniform")
    line = memory.training_vs_inference(plan, Workload(batch=B))
    m = re.fullmatch(
        r"training needs (\d+\.\d)x the memory of inference for this model and "
        r"batch \((\d+\.\d+) MiB vs (\d+\.\d+) MiB\)",
        line,
    )
    assert m is not None, line
    train = memory.predict(plan, Workload(batch=B, microbatches=1, schedule="1f1b")).total
    assert float(m.group(1)) == pytest.approx(train / memory.predict_inference(g, B), abs=0.05)
    assert float(m.group(1)) > 1


def _compositions(n, k):
    if k == 1:
        return [(n,)]
    return [(a, *rest) for a in range(1, n - k + 2) for rest in _compositions(n - a, k - 1)]


@pytest.mark.parametrize("schedule,M", [("1f1b", 4), ("gpipe", 2), ("1f1b", 1)])
def test_stage_cost_matches_prediction_of_built_plans(schedule, M):
    g = mlp([12, 40, 8, 30, 6, 5], bias=True)
    n = len(g.layers)
    for K in (1, 2, 3):
        cost = memory.stage_memory_cost(
            g,
            K,
            Workload(
                batch=BATCH,
                microbatches=M,
                schedule=schedule,
                optimizer="sgd",
                momentum=0.9,
                recompute=M == 2,
            ),
        )
        for sizes in _compositions(n, K):
            pred = memory.predict(
                make_plan(g, sizes),
                Workload(
                    batch=BATCH,
                    microbatches=M,
                    schedule=schedule,
                    optimizer="sgd",
                    momentum=0.9,
                    recompute=M == 2,
                ),
            )
            start = 0
            for k, size in enumerate(sizes):
                assert cost(start, start + size, k) == pred.stages[k].total
                start += size


@pytest.mark.parametrize("K", [2, 3])
def test_memory_partition_minimises_the_largest_stage(K):
    g = mlp([12, 40, 8, 30, 6, 5], bias=True)
    kw = dict(batch=BATCH, microbatches=4, schedule="1f1b", optimizer="adam")
    best = min(
        max(s.total for s in memory.predict(make_plan(g, sizes), Workload(**kw)).stages)
        for sizes in _compositions(len(g.layers), K)
    )
    plan = partition(g, K, "memory", memory_cost=memory.stage_memory_cost(g, K, Workload(**kw)))
    assert max(s.total for s in memory.predict(plan, Workload(**kw)).stages) == best
    # the default cost (batch 64, one micro-batch, 1F1B, Adam) is the same model
    dflt = dict(batch=64, microbatches=1, schedule="1f1b", optimizer="adam")
    plan = partition(g, K, "memory")
    best = min(
        max(s.total for s in memory.predict(make_plan(g, sizes), Workload(**dflt)).stages)
        for sizes in _compositions(len(g.layers), K)
    )
    assert max(s.total for s in memory.predict(plan, Workload(**dflt)).stages) == best


def test_memory_partition_with_budgets():
    g = mlp([256, 512, 512, 512, 10], bias=True)
    K = 2
    kw = dict(batch=64, microbatches=2, schedule="1f1b", optimizer="adam")
    cost = memory.stage_memory_cost(g, K, Workload(**kw))
    totals = {
        sizes: [s.total for s in memory.predict(make_plan(g, sizes), Workload(**kw)).stages]
        for sizes in _compositions(len(g.layers), K)
    }
    roomy = [float(max(max(t) for t in totals.values()))] * K
    plan = partition(g, K, "memory", memory_cost=cost, budgets=roomy)
    assert all(s.total <= roomy[0] for s in memory.predict(plan, Workload(**kw)).stages)
    budget = 2 * 2**20
    # the split minimising the worst excess, and that excess (what the error must name)
    excess = min(max(t - budget for t in ts) for ts in totals.values())
    assert excess > 0
    with pytest.raises(PlanError) as err:
        partition(g, K, "memory", memory_cost=cost, budgets=[budget] * K)
    msg = str(err.value)
    assert f"needs {excess / 2**20:.2f} MiB more than its {budget / 2**20:.2f} MiB budget" in msg


# -- data parallelism and budgets ----------------------------------------------------------------
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("K,batch", [(2, 64), (4, 64), (3, 64), (4, 6)])
def test_data_parallel_is_one_device_on_ceil_rows(opt, K, batch):
    g = mlp(SIZES, bias=True)
    plan = partition(g, 1)
    dp = memory.predict_data_parallel(plan, K, Workload(batch=batch, optimizer=opt, momentum=0.0))
    rows = -(-batch // K)
    one = memory.predict(
        plan, Workload(batch=rows, microbatches=1, schedule="1f1b", optimizer=opt, momentum=0.0)
    ).stages[0]
    params = sum(allocated(nbytes(v.shape, 1, "float32")) for v in g.params)
    assert params == one.bytes["parameter"]
    assert len(dp.stages) == K and [s.index for s in dp.stages] == list(range(K))
    for s in dp.stages:
        assert s.rows == rows and s.in_flight == 1
        assert s.entries() == one.entries()  # no all-reduce buffer: the gradients are summed
        assert s.total == one.total
    assert (dp.batch, dp.microbatches, dp.schedule, dp.recompute) == (
        batch,
        1,
        memory.DATA_PARALLEL,
        False,
    )
    assert dp.total == K * dp.stages[0].total
    # against the whole batch on one device: the same state, 1/K of the activations
    full = memory.predict(
        plan, Workload(batch=batch, microbatches=1, schedule="1f1b", optimizer=opt, momentum=0.0)
    ).stages[0]
    for c in ("parameter", "gradient", "optimizer"):
        assert dp.stages[0].bytes[c] == full.bytes[c]
    if batch % K == 0:  # 1/K of each buffer's data; each still takes its alignment slack
        acts = sum(c == "activation" for c, _ in full.entries().values())
        gap = dp.stages[0].bytes["activation"] * K - full.bytes["activation"]
        assert 0 <= gap <= 128 * K * acts
    assert "replica 0" in dp.table() and f"over {K} data-parallel replicas" in dp.table()
    assert dp.to_dict()["stages"][K - 1]["total"] == dp.stages[0].total


@pytest.mark.parametrize("K,batch,M", [(2, 64, 4), (3, 64, 2), (4, 6, 4), (2, 7, 8)])
def test_data_parallel_accumulates_micro_batches_per_replica(K, batch, M):
    """M micro-batches per replica: the one-stage model at ceil(B / K) rows in min(M, rows)
    micro-batches (activations of one micro-batch)."""
    g = mlp(SIZES, bias=True)
    plan = partition(g, 1)
    dp = memory.predict_data_parallel(plan, K, Workload(batch=batch, microbatches=M))
    rows = -(-batch // K)
    m = min(M, rows)
    one = memory.predict(plan, Workload(batch=rows, microbatches=m)).stages[0]
    assert dp.microbatches == m
    for s in dp.stages:
        assert s.rows == -(-rows // m)
        assert s.entries() == one.entries()
    flat = memory.predict_data_parallel(plan, K, Workload(batch=batch)).stages[0]
    for c in ("parameter", "gradient", "optimizer"):
        assert dp.stages[0].bytes[c] == flat.bytes[c]
    assert dp.stages[0].bytes["activation"] <= flat.bytes["activation"]


@pytest.mark.parametrize(
    "R,K,M,schedule", [(2, 2, 4, "1f1b"), (3, 2, 2, "zb-h1"), (2, 3, 1, "gpipe")]
)
@pytest.mark.parametrize("channels", [False, True])
def test_replicated_pipelines_are_stage_k_on_a_share_plus_its_ring_channels(
    R, K, M, schedule, channels
):
    """R x K workers: worker (r, k) holds stage k's prediction at ceil(B / R) rows in M
    micro-batches, plus (channels, R > 1) its two ring channels sized for stage k's
    parameters; replica-major indices."""
    g = mlp(SIZES, bias=True)
    plan = partition(g, K)
    w = Workload(batch=30, microbatches=M, schedule=schedule)
    grid = memory.predict_data_parallel(plan, R, w, channels=channels)
    assert len(grid.stages) == R * K and [s.index for s in grid.stages] == list(range(R * K))
    assert (grid.replicas, grid.microbatches, grid.schedule) == (R, M, schedule)
    base = memory.predict(
        plan,
        Workload(batch=10 if R == 3 else 15, microbatches=M, schedule=schedule),
        channels=channels,
    )
    for s in grid.stages:
        k = s.index % K
        grads = memory.grad_buffer_bytes(plan.stages[k].graph)
        want = base.stages[k].entries()
        ring = {n: e for n, e in s.entries().items() if n not in want}
        assert {n: s.entries()[n] for n in want} == want
        assert len(ring) == (2 if channels else 0)
        if channels:
            size = memory.ring_channel_bytes(grads, R, 4)
            assert sorted(ring.values()) == [("boundary", size)] * 2
    assert f"over {R} replicas of a {K}-stage pipeline" in grid.table()
    assert grid.to_dict()["replicas"] == R


def test_data_parallel_refuses_too_many_replicas():
    g = mlp(SIZES)
    with pytest.raises(PlanError, match="replicas=9 exceeds the batch of 8 rows"):
        memory.predict_data_parallel(partition(g, 1), 9, Workload(batch=8))
    with pytest.raises(PlanError, match="replicas=0"):
        memory.predict_data_parallel(partition(g, 1), 0, Workload(batch=8))


def test_budget_problem_names_the_fullest_device_its_categories_and_the_budget():
    g = mlp([64, 256, 256, 256, 10])
    pred = memory.predict(partition(g, 2), Workload(batch=64, microbatches=2, schedule="1f1b"))
    worst = max(pred.stages, key=lambda s: s.total)
    assert memory.budget_problem(pred, worst.total) is None
    assert memory.budget_problem(pred, 10 * worst.total) is None
    budget = worst.total - 1
    msg = memory.budget_problem(pred, budget)
    assert msg is not None and "\n" not in msg
    assert msg.startswith(
        f"does not fit: needs {human_bytes(worst.total)} on device {worst.index} ("
    )
    assert msg.endswith(f"), budget {human_bytes(budget)}")
    listed = msg.split("(", 1)[1].rsplit(")", 1)[0].split(", ")
    want = [f"{c} {human_bytes(n)}" for c, n in worst.bytes.items() if n]
    assert listed == want and len(want) < len(memory.CATEGORIES) + 1
    # one device: no boundary buffers, so no boundary entry
    single = memory.predict(partition(g, 1), Workload(batch=64, microbatches=1, schedule="1f1b"))
    msg = memory.budget_problem(single, 1)
    assert "on device 0" in msg and "boundary" not in msg and "parameter" in msg
    # data parallel: every replica is alike, the first is named
    dp = memory.predict_data_parallel(partition(g, 1), 4, Workload(batch=64))
    assert "on device 0" in memory.budget_problem(dp, dp.stages[0].total - 1)


def test_shm_channel_buffers_are_counted_per_neighbour():
    """On the shm transport each stage maps a buffer from and one to each neighbour, a whole
    minibatch of the boundary wide (the output of the earlier stage of the pair); the data-
    parallel ring maps one from the left and one to the right, twice the gradients each."""
    g = mlp([6, 8, 5, 4, 3], bias=True)
    plan = partition(g, 3, "uniform")
    without = memory.predict(plan, Workload(batch=10, microbatches=2, schedule="1f1b"))
    pred = memory.predict(plan, Workload(batch=10, microbatches=2, schedule="1f1b"), channels=True)
    widths = [plan.stages[k].graph.var(plan.stages[k].output).shape[-1] for k in (0, 1)]
    assert plan.sizes() == [2, 1, 1] and widths == [5, 4]  # what stage k sends stage k + 1
    size = [memory.channel_bytes(w, 10, 4) for w in widths]
    assert size[0] == 10 * 5 * 4 + 64 * 10
    feed = memory.channel_bytes(6, 10, 4)  # the driver's inputs to stage 0, 6 wide
    want = [
        {"channel:feed": feed, "channel:in0": size[0], "channel:to_next": size[0]},
        {"channel:in0": size[0], "channel:to_prev": size[0],
         "channel:in1": size[1], "channel:to_next": size[1]},
        {"channel:in0": size[1], "channel:to_prev": size[1]},
    ]  # fmt: skip
    for sm, bare, w in zip(pred.stages, without.stages, want, strict=True):
        got = {n: b for n, (c, b) in sm.entries().items() if n.startswith("channel:")}
        assert got == w
        assert all(sm.entries()[n][0] == "boundary" for n in got)
        assert sm.total == bare.total + sum(w.values())
    one = partition(g, 1)
    dp = memory.predict_data_parallel(one, 2, Workload(batch=10), channels=True).stages[0]
    ring = memory.ring_channel_bytes(memory.grad_buffer_bytes(g, "float32"), 2, 4)
    assert dp.entries()["channel:in0"] == dp.entries()["channel:to_right"] == ("boundary", ring)
    # and the driver's feed of its share's inputs: 5 rows of the input's width, a minibatch wide
    feed = memory.channel_bytes(g.inputs[0].shape[-1], 5, 4)
    assert dp.entries()["channel:feed"] == ("boundary", feed)
    # what a step sends: 2 (N - 1) chunks of ceil(n / N) elements, plus 64 bytes a message for
    # 2 N messages (a margin): 10 float32 by 2 replicas: 2 chunks of 5; 11: of 6; 12 by 3: 4 of 4
    assert memory.ring_channel_bytes(40, 2, 4) == 2 * 5 * 4 + 256
    assert memory.ring_channel_bytes(44, 2, 4) == 2 * 6 * 4 + 256
    assert memory.ring_channel_bytes(48, 3, 4) == 4 * 4 * 4 + 384

    assert memory.predict_data_parallel(one, 1, Workload(batch=10), channels=True).stages[
        0
    ].total == (memory.predict_data_parallel(one, 1, Workload(batch=10)).stages[0].total)
