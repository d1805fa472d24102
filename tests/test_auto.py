"""Contract of graphpart.plan.auto: the pure half of `plan --auto` (no workers, no Ray).

search(graph, devices, budget, batch, rates) lists one-device, accumulation, pipeline and
data-parallel setups with each device's predicted peak (graphpart.plan.memory, unchanged: the
single candidate's memory IS memory.predict of the same setup, accumulation's is predict with
M micro-batches) and predicted speed (graphpart.plan.schedule.simulate fed FLOPs over
Rates.flops_per_s, a fixed cost per action, linear transfers). With a budget below one
device's peak the single candidate does not fit and its `problem` names the device, the bytes
needed and the budget, while some pipeline fits with problem None. A data-parallel replica
holds one device's parameters, gradients and optimizer state and 1/K of its activations; a
pipeline's stages share the parameters (they sum to one device's, about 1/K each on a balanced
model). Candidates are ranked fitting first, then by samples/s descending, then by the largest
peak ascending. With equal stage times the bubble is (K-1)/(M+K-1) and the step (M+K-1) times
a forward plus a backward. Accumulation costs the same FLOPs plus M times the per-micro-batch
fixed cost. comm/step: 2 B x width x itemsize over every boundary, 2 (K-1)/K of the
parameter bytes for a ring all-reduce. config() gives the keys that reproduce a candidate;
to_dict is JSON; table is one row per candidate. A 5-layer model on 4 devices searches in
well under a second.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from graphpart.errors import PlanError
from graphpart.ir import mlp
from graphpart.plan import auto, memory
from graphpart.plan.auto import Rates, search
from graphpart.plan.partition import partition
from graphpart.units import human_bytes

SIZES = [64, 256, 256, 256, 10]  # balanced enough: 2 stages split 2+2
RATES = Rates(flops_per_s=5e10, copy_bytes_per_s=5e9, hop_s=50e-6)
# compute and transfers free, every action 1 ms: every stage takes the same time
EQUAL = Rates(flops_per_s=1e30, copy_bytes_per_s=math.inf, hop_s=0.0, action_s=1e-3)
BATCH = 64


def _find(cands, **want):
    hits = [c for c in cands if all(getattr(c, k) == v for k, v in want.items())]
    assert len(hits) == 1, (want, len(hits))
    return hits[0]


@pytest.fixture(scope="module")
def graph():
    return mlp(SIZES)


@pytest.fixture(scope="module")
def roomy(graph):
    return search(graph, devices=4, budget=None, batch=BATCH, rates=RATES)


def test_enumerates_every_kind_once(graph, roomy):
    kinds = [c.kind for c in roomy]
    ms = [m for m in (1, 2, 4, 8, 16, 32) if m <= BATCH]
    assert kinds.count("single") == 2  # recompute off, on
    assert kinds.count("accumulate") == 2 * (len(ms) - 1)
    assert kinds.count("pipeline") == 3 * len(ms) * 2 * 2  # K 2..4, M, schedule, recompute
    assert kinds.count("data-parallel") == 3  # K 2..4
    keys = [tuple(sorted(c.config().items())) for c in roomy]
    assert len(set(keys)) == len(keys)
    assert all(c.fits and c.problem is None for c in roomy)
    for c in roomy:
        assert len(c.peak_bytes) == c.devices
        assert c.devices == (c.replicas if c.kind == "data-parallel" else c.stages)
        assert sum(c.split) == len(graph.layers)


def test_single_candidate_memory_is_memory_predict(graph, roomy):
    plan = partition(graph, 1)
    for recompute in (False, True):
        c = _find(roomy, kind="single", recompute=recompute)
        pred = memory.predict(
            plan, batch=BATCH, microbatches=1, schedule="1f1b", recompute=recompute
        )
        assert c.peak_bytes == (pred.stages[0].total,)
        assert c.worst_bytes == pred.stages[0].bytes
        assert c.memory.stages[0].entries() == pred.stages[0].entries()
        assert (c.stages, c.microbatches, c.replicas, c.devices, c.split) == (1, 1, 1, 1, (4,))
    acc = _find(roomy, kind="accumulate", microbatches=8, recompute=False)
    pred = memory.predict(plan, batch=BATCH, microbatches=8, schedule="1f1b")
    assert acc.peak_bytes == (pred.total,)
    single = _find(roomy, kind="single", recompute=False)
    assert acc.worst_bytes["activation"] < single.worst_bytes["activation"]


def test_pipeline_candidate_memory_is_memory_predict(graph, roomy):
    for K in (2, 3, 4):
        plan = partition(graph, K, "balanced")
        c = _find(
            roomy, kind="pipeline", stages=K, microbatches=4, schedule="gpipe", recompute=True
        )
        pred = memory.predict(  # on Ray's default transport: with its shared-memory channels
            plan, batch=BATCH, microbatches=4, schedule="gpipe", recompute=True, channels=True
        )
        assert c.peak_bytes == tuple(s.total for s in pred.stages)
        assert c.split == tuple(plan.sizes())
        assert c.worst_bytes == max(pred.stages, key=lambda s: s.total).bytes


def test_budget_filters_and_names_the_problem(graph):
    single_peak = memory.predict(
        partition(graph, 1), batch=BATCH, microbatches=1, schedule="1f1b"
    ).total
    budget = single_peak - 1
    cands = search(graph, devices=4, budget=budget, batch=BATCH, rates=RATES)
    single = _find(cands, kind="single", recompute=False)
    assert not single.fits
    assert single.problem == (
        f"does not fit: needs {human_bytes(single_peak)} on device 0 "
        f"({single.problem.split('(', 1)[1].rsplit(')', 1)[0]}), budget {human_bytes(budget)}"
    )
    assert "parameter" in single.problem and "optimizer" in single.problem
    fitting = [c for c in cands if c.fits]
    assert any(c.kind == "pipeline" for c in fitting)
    assert all(c.problem is None and c.max_peak <= budget for c in fitting)
    assert all(c.problem and c.max_peak > budget for c in cands if not c.fits)
    # fitting first
    first_bad = next(i for i, c in enumerate(cands) if not c.fits)
    assert all(not c.fits for c in cands[first_bad:])
    # a pipeline that does not fit names its fullest stage
    tight = search(graph, devices=2, budget=1, batch=BATCH, rates=RATES)
    c = _find(tight, kind="pipeline", microbatches=2, schedule="1f1b", recompute=False)
    assert f"on device {c.worst_device} " in c.problem
    assert c.peak_bytes[c.worst_device] == c.max_peak
    assert not any(c.fits for c in tight)


def test_data_parallel_replicas_hold_the_whole_state_and_1_over_k_activations(graph, roomy):
    single = _find(roomy, kind="single", recompute=False)
    for K in (2, 4):
        dp = _find(roomy, kind="data-parallel", replicas=K)
        assert (dp.stages, dp.microbatches, dp.devices, dp.split) == (1, 1, K, (4,))
        assert len(set(dp.peak_bytes)) == 1
        for c in ("parameter", "gradient", "optimizer"):
            assert dp.worst_bytes[c] == single.worst_bytes[c]
        assert dp.worst_bytes["activation"] * K == single.worst_bytes["activation"]
        p = memory.param_bytes(graph)
        assert dp.worst_bytes["workspace"] > p  # the all-reduce buffer
        assert dp.comm_bytes_per_step == round(2 * (K - 1) / K * p)
        assert dp.config() == {
            "pipeline.stages": 1,
            "pipeline.microbatches": 1,
            "pipeline.schedule": "1f1b",
            "pipeline.recompute": False,
            "pipeline.data_parallel": K,
        }


def test_pipeline_stages_share_the_parameters(graph, roomy):
    single = _find(roomy, kind="single", recompute=False).worst_bytes["parameter"]
    for K in (2, 3, 4):
        c = _find(
            roomy, kind="pipeline", stages=K, microbatches=4, schedule="1f1b", recompute=False
        )
        per = [s.bytes["parameter"] for s in c.memory.stages]
        assert sum(per) == single
        assert max(per) < single
    c = _find(roomy, kind="pipeline", stages=2, microbatches=4, schedule="1f1b", recompute=False)
    per = [s.bytes["parameter"] for s in c.memory.stages]
    assert all(abs(p / single - 1 / 2) < 0.1 for p in per)  # 2+2 layers: 55% / 45%
    assert c.comm_bytes_per_step == 2 * BATCH * 256 * 4  # one boundary of width 256, float32
    assert c.config() == {
        "pipeline.stages": 2,
        "pipeline.microbatches": 4,
        "pipeline.schedule": "1f1b",
        "pipeline.recompute": False,
        "pipeline.data_parallel": 1,
    }


def test_ranking_order(roomy):
    for a, b in zip(roomy, roomy[1:], strict=False):
        assert a.fits >= b.fits
        if a.fits == b.fits:
            assert a.samples_per_s >= b.samples_per_s
            if a.samples_per_s == b.samples_per_s:
                assert a.max_peak <= b.max_peak
    assert roomy == sorted(roomy, key=lambda c: (not c.fits, -c.samples_per_s, c.max_peak))
    for c in roomy:
        assert c.samples_per_s == pytest.approx(BATCH / c.step_s)


def test_equal_stage_times_give_the_textbook_bubble(graph):
    cands = search(graph, devices=4, budget=None, batch=BATCH, rates=EQUAL)
    pipes = [c for c in cands if c.kind == "pipeline"]
    assert pipes
    for c in pipes:
        K, M = c.stages, c.microbatches
        assert c.bubble == pytest.approx((K - 1) / (M + K - 1), abs=1e-9)
        assert c.step_s == pytest.approx(2 * (M + K - 1) * 1e-3, rel=1e-9)
    # the same through step_time on any plan with equal stage times
    for K, M, kind in ((2, 8, "gpipe"), (4, 4, "1f1b"), (3, 1, "1f1b")):
        step, tl = auto.step_time(
            partition(graph, K),
            batch=BATCH,
            microbatches=M,
            schedule=kind,
            recompute=False,
            rates=EQUAL,
        )
        assert tl.bubble == pytest.approx((K - 1) / (M + K - 1))
        assert step == pytest.approx(tl.makespan)


def test_accumulation_costs_the_fixed_cost_m_times(graph):
    cands = search(graph, devices=1, budget=None, batch=BATCH, rates=RATES)
    assert {c.kind for c in cands} == {"single", "accumulate"}
    single = _find(cands, kind="single", recompute=False)
    for M in (2, 8, 32):
        acc = _find(cands, kind="accumulate", microbatches=M, recompute=False)
        # the same FLOPs; M forwards and M backwards instead of one each
        assert acc.step_s - single.step_s == pytest.approx(2 * (M - 1) * RATES.hop_s, rel=1e-9)
        assert acc.bubble == 0.0 and acc.comm_bytes_per_step == 0
    assert cands[0] is single  # fastest when it fits
    plan = partition(graph, 1)
    flops = plan.stages[0].flops_fwd + plan.stages[0].flops_bwd
    update = 7 * memory.param_bytes(graph) / RATES.copy_bytes_per_s  # Adam: 3 + 2 x 2 passes
    want = flops * BATCH / RATES.flops_per_s + 2 * RATES.hop_s + update
    assert single.step_s == pytest.approx(want, rel=1e-9)
    rec = _find(cands, kind="single", recompute=True)
    fwd = plan.stages[0].flops_fwd * BATCH / RATES.flops_per_s
    assert rec.step_s == pytest.approx(single.step_s + fwd, rel=1e-9)


def test_data_parallel_time_is_compute_on_ceil_rows_plus_a_ring(graph):
    batch = 30
    cands = search(graph, devices=4, budget=None, batch=batch, rates=RATES)
    plan = partition(graph, 1)
    st = plan.stages[0]
    p = memory.param_bytes(graph)
    for K in (2, 3, 4):
        dp = _find(cands, kind="data-parallel", replicas=K)
        rows = -(-batch // K)
        want = (
            (st.flops_fwd + st.flops_bwd) * rows / RATES.flops_per_s
            + 2 * RATES.hop_s
            + 2 * (K - 1) * (RATES.hop_s + p / K / RATES.copy_bytes_per_s)
            + 7 * p / RATES.copy_bytes_per_s
        )
        assert dp.step_s == pytest.approx(want, rel=1e-9)
        assert (
            dp.peak_bytes[0]
            == memory.predict_data_parallel(plan, K, batch=batch, channels=True).stages[0].total
        )


def test_small_batches_and_few_layers_limit_the_choices():
    g = mlp([8, 8, 4])  # two layers
    cands = search(g, devices=8, budget=None, batch=3, rates=RATES)
    assert max(c.stages for c in cands) == 2
    assert max(c.replicas for c in cands) == 3
    assert all(c.microbatches <= 3 for c in cands)


def test_reports(roomy):
    text = auto.table(roomy, 5)
    lines = text.splitlines()
    assert len(lines) == 2 + 5
    assert "samples/s" in lines[0] and "peak per device" in lines[0] and "comm/step" in lines[0]
    assert lines[2].split()[0] == "1"
    assert len(auto.table(roomy, None).splitlines()) == 2 + len(roomy)
    for c in roomy:
        d = json.loads(json.dumps(auto.to_dict(c)))
        assert d["config"] == c.config()
        assert d["peak_bytes"] == list(c.peak_bytes) and d["max_peak"] == c.max_peak
        assert d["memory"]["stages"][0]["total"] == c.peak_bytes[0]
    hash(roomy[0])


def test_bad_arguments_are_plan_errors(graph):
    for bad in (
        dict(devices=0),
        dict(batch=0),
        dict(budget=0),
        dict(budget=-5),
        dict(microbatch_choices=(1, 0)),
        dict(devices=True),
    ):
        kw = dict(devices=2, budget=None, batch=8, rates=RATES) | bad
        with pytest.raises(PlanError):
            search(graph, **kw)
    for bad in (
        dict(flops_per_s=0.0),
        dict(flops_per_s=math.nan),
        dict(copy_bytes_per_s=-1.0),
        dict(hop_s=math.inf),
        dict(hop_s=-1e-6),
        dict(action_s=-1.0),
    ):
        with pytest.raises(PlanError, match="Rates\\."):
            Rates(**(dict(flops_per_s=1e9, copy_bytes_per_s=1e9, hop_s=0.0) | bad))


def test_search_is_fast():
    g = mlp([64, 256, 256, 256, 256, 10])  # five layers
    t = time.perf_counter()
    cands = search(g, devices=4, budget=4 * 2**20, batch=256, rates=RATES)
    took = time.perf_counter() - t
    assert took < 1.0, f"search took {took:.2f} s"
    assert len(cands) > 50
