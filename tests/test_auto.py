"""Contract of graphpart.plan.auto: the pure half of `plan --auto` (no workers, no Ray).

search(graph, devices, budget, batch, rates) lists one-device, accumulation, pipeline and data-
parallel setups with each device's predicted peak (graphpart.plan.memory, unchanged: the single
candidate's memory IS memory.predict of the same setup, accumulation's is predict with M micro-
batches) and predicted speed (graphpart.plan.schedule.simulate fed FLOPs over
Rates.flops_per_s, a fixed cost per action, linear transfers). With a budget below one device's
peak the single candidate does not fit and its `problem` names the device, the bytes needed and
the budget, while some pipeline fits with problem None. A data-parallel replica holds one
device's parameters, gradients and optimizer state and 1/K of its activations; a pipeline's
stages share the parameters (they sum to one device's, about 1/K each on a balanced model).
Candidates are ranked fitting first, then by predicted step; steps within TIE (3%) of a group's
fastest share its rank ('=N'), listed fewest devices then smallest peak first. On a machine
whose cores the devices outnumber, busy devices share them (graphpart.plan.timing, the model
compare's projection uses too). With equal stage times the bubble is (K-1)/(M+K-1) and the step
(M+K-1) times a forward plus a backward. Accumulation costs the same FLOPs plus M times the
per-micro-batch fixed cost. comm/step: 2 B x width x itemsize over every boundary, 2 (K-1)/K of
the parameter bytes for a ring all-reduce. config() gives the keys that reproduce a candidate;
to_dict is JSON; table is one row per candidate. A 5-layer model on 4 devices searches in well
under a second. Virtual-stage candidates (interleaved with 2 or 3 chunks a device, zbv with 2)
are K devices of v chunks over the V = K v stages cut "balanced" where V <= layers, with
predict_virtual's memory per device and the virtual-stage simulator's time. With measured
layer times (Rates.layers) an action is its layers' seconds at its rows and an update their
measured update; a ring all-reduce is 2 (R - 1) hops and 4.5 copies of each chunk a step. A
setup on n devices is timed at the rates measured with n devices busy (Rates.busy), and pays
the driver's call to its workers (Rates.call_s) once a step; a one-device setup does not, and
is timed at the rates measured with every core's threads (Rates.whole) where given.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import pytest

from graphpart.errors import PlanError
from graphpart.ir import mlp
from graphpart.plan import auto, memory
from graphpart.plan import schedule as sch
from graphpart.plan.auto import Rates, search
from graphpart.plan.layer_times import LayerTimes
from graphpart.plan.memory import Workload
from graphpart.plan.partition import partition
from graphpart.plan.virtual_memory import predict_virtual
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
    return search(graph, Workload(batch=BATCH), devices=4, budget=None, rates=RATES)


def test_enumerates_every_kind_once(graph, roomy):
    kinds = [c.kind for c in roomy]
    ms = [m for m in (1, 2, 4, 8, 16, 32) if m <= BATCH]
    assert kinds.count("single") == 2  # recompute off, on
    assert kinds.count("accumulate") == 2 * (len(ms) - 1)
    # K 2..4, M, schedule, recompute; and virtual stages: the 4 layers as 2 devices of 2
    # chunks, interleaved and zbv (3 chunks, or 3 devices, would need 6 layers)
    virtual = [c for c in roomy if c.chunks > 1]
    assert kinds.count("pipeline") == 3 * len(ms) * len(sch.KINDS) * 2 + 2 * len(ms) * 2
    assert len(virtual) == 2 * len(ms) * 2
    # K 2..4, each with M = 1 and every choice up to its rows floor(B / K)
    assert kinds.count("data-parallel") == sum(
        1 + sum(1 < m <= BATCH // k for m in ms) for k in (2, 3, 4)
    )
    # 2-d on 4 devices: R = 2 replicas of K = 2 stages, M up to floor(B / 2), every schedule
    assert kinds.count("2-d") == sum(m <= BATCH // 2 for m in ms) * len(sch.KINDS) * 2
    keys = [tuple(sorted(c.config().items())) for c in roomy]
    assert len(set(keys)) == len(keys)
    assert all(c.fits and c.problem is None for c in roomy)
    for c in roomy:
        assert len(c.peak_bytes) == c.devices
        want = {"data-parallel": c.replicas, "2-d": c.replicas * c.stages}.get(c.kind, c.stages)
        assert c.devices == want
        assert sum(c.split) == len(graph.layers)


def test_virtual_candidates_are_devices_of_chunks_with_their_memory(graph, roomy):
    """A virtual-stage candidate: K devices holding v chunks each of the V = K v stages cut
    "balanced"; its memory is predict_virtual's (per device); its config reproduces it
    (pipeline.stages = devices, pipeline.chunks); its time the virtual-stage simulator's."""
    for kind in ("interleaved", "zbv"):
        c = _find(roomy, kind="pipeline", schedule=kind, microbatches=4, recompute=False)
        assert (c.devices, c.stages, c.chunks, c.split) == (2, 2, 2, (1, 1, 1, 1))
        w = Workload(batch=BATCH, microbatches=4, schedule=kind, chunks=2)
        pred = predict_virtual(partition(graph, 4, "balanced"), w, channels=True)
        assert c.peak_bytes == tuple(d.total for d in pred.stages)
        assert c.config()["pipeline.chunks"] == 2 and c.config()["pipeline.stages"] == 2
        assert c.step_s > 0 and 0.0 <= c.bubble < 1.0
        assert f"{kind} v=2" in auto.table([c])


def test_single_candidate_memory_is_memory_predict(graph, roomy):
    plan = partition(graph, 1)
    for recompute in (False, True):
        c = _find(roomy, kind="single", recompute=recompute)
        pred = memory.predict(
            plan, Workload(batch=BATCH, microbatches=1, schedule="1f1b", recompute=recompute)
        )
        assert c.peak_bytes == (pred.stages[0].total,)
        assert c.worst_bytes == pred.stages[0].bytes
        assert c.memory.stages[0].entries() == pred.stages[0].entries()
        assert (c.stages, c.microbatches, c.replicas, c.devices, c.split) == (1, 1, 1, 1, (4,))
    acc = _find(roomy, kind="accumulate", microbatches=8, recompute=False)
    pred = memory.predict(plan, Workload(batch=BATCH, microbatches=8, schedule="1f1b"))
    assert acc.peak_bytes == (pred.total,)
    single = _find(roomy, kind="single", recompute=False)
    assert acc.worst_bytes["activation"] < single.worst_bytes["activation"]


def test_pipeline_candidate_memory_is_memory_predict(graph, roomy):
    for K in (2, 3, 4):
        plan = partition(graph, K, "balanced")
        c = _find(
            roomy, kind="pipeline", stages=K, microbatches=4, schedule="gpipe", recompute=True
        )
        # on Ray's default transport: with its shared-memory channels
        pred = memory.predict(
            plan,
            Workload(batch=BATCH, microbatches=4, schedule="gpipe", recompute=True),
            channels=True,
        )
        assert c.peak_bytes == tuple(s.total for s in pred.stages)
        assert c.split == tuple(plan.sizes())
        assert c.worst_bytes == max(pred.stages, key=lambda s: s.total).bytes


def test_budget_filters_and_names_the_problem(graph):
    single_peak = memory.predict(
        partition(graph, 1), Workload(batch=BATCH, microbatches=1, schedule="1f1b")
    ).total
    budget = single_peak - 1
    cands = search(graph, Workload(batch=BATCH), devices=4, budget=budget, rates=RATES)
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
    tight = search(graph, Workload(batch=BATCH), devices=2, budget=1, rates=RATES)
    c = _find(tight, kind="pipeline", microbatches=2, schedule="1f1b", recompute=False)
    assert f"on device {c.worst_device} " in c.problem
    assert c.peak_bytes[c.worst_device] == c.max_peak
    assert not any(c.fits for c in tight)


def test_data_parallel_replicas_hold_the_whole_state_and_1_over_k_activations(graph, roomy):
    single = _find(roomy, kind="single", recompute=False)
    for K in (2, 4):
        dp = _find(roomy, kind="data-parallel", replicas=K, microbatches=1)
        assert (dp.stages, dp.microbatches, dp.devices, dp.split) == (1, 1, K, (4,))
        assert len(set(dp.peak_bytes)) == 1
        for c in ("parameter", "gradient", "optimizer"):
            assert dp.worst_bytes[c] == single.worst_bytes[c]
        # 1/K of each activation's data; each buffer still takes its alignment slack
        gap = dp.worst_bytes["activation"] * K - single.worst_bytes["activation"]
        assert 0 <= gap <= 128 * K * len(graph.vars)
        p = memory.param_bytes(graph)
        # no all-reduce buffer (the ring sums the gradients in place): a share's workspace
        assert dp.worst_bytes["workspace"] * K >= single.worst_bytes["workspace"]
        assert dp.worst_bytes["workspace"] < single.worst_bytes["workspace"]
        assert dp.comm_bytes_per_step == round(2 * (K - 1) / K * p)
        assert dp.config() == {
            "pipeline.stages": 1,
            "pipeline.microbatches": 1,
            "pipeline.schedule": "1f1b",
            "pipeline.recompute": False,
            "pipeline.data_parallel": K,
        }


def test_data_parallel_time_and_memory_count_each_replicas_micro_batches(graph):
    """A replica's step runs min(M, its ceil(B / K) rows) micro-batches, 2 actions each (with
    free compute and transfers, 1 ms an action: 2 M ms); the search proposes data parallelism
    with each M of the choices up to floor(B / K) per replica, whose predicted activations are
    those of one micro-batch of ceil(ceil(B / K) / M) rows."""
    one = partition(graph, 1)
    for m, want in ((1, 2), (2, 4), (4, 8)):
        t = auto._data_parallel_time(one, 2, Workload(batch=BATCH, microbatches=m), EQUAL)
        assert t == pytest.approx(want * 1e-3)
    short = auto._data_parallel_time(one, 2, Workload(batch=6, microbatches=4), EQUAL)
    assert short == pytest.approx(6e-3)  # shares of 3 rows: 3 micro-batches each
    cands = search(
        graph, Workload(batch=BATCH, microbatches=4), devices=2, budget=None, rates=RATES
    )
    m1 = _find(cands, kind="data-parallel", replicas=2, microbatches=1)
    m4 = _find(cands, kind="data-parallel", replicas=2, microbatches=4)
    assert m4.config()["pipeline.microbatches"] == 4 and m4.config()["pipeline.data_parallel"] == 2
    act1, act4 = (c.memory.stages[0].bytes["activation"] for c in (m1, m4))
    assert act4 < act1
    share = math.ceil(BATCH / 2)
    assert m4.memory.stages[0].rows == math.ceil(share / 4)
    for cat in ("parameter", "gradient", "optimizer"):
        assert m4.memory.stages[0].bytes[cat] == m1.memory.stages[0].bytes[cat]


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
    """Fitting first; each rank group starts at the fastest candidate left and holds every one
    within TIE of its step; groups run fastest first; inside a group fewest devices first, then
    smallest peak; ranks are 1-based positions, shared ('=N') only inside a tie."""
    assert [c.rank for c in roomy][0] == 1
    for i, c in enumerate(roomy):
        group = [d for d in roomy if d.rank == c.rank]
        assert roomy[c.rank - 1] is group[0] and c.tied == (len(group) > 1)
        assert c.rank_label == (f"={c.rank}" if c.tied else str(c.rank))
        lead = min(group, key=lambda d: d.step_s)
        assert all(d.fits == lead.fits and d.step_s <= lead.step_s * (1 + auto.TIE) for d in group)
        keys = [(d.devices, d.max_peak) for d in group]
        assert keys == sorted(keys)
        if i + 1 < len(roomy) and roomy[i + 1].rank != c.rank:
            nxt = roomy[i + 1]
            assert c.fits >= nxt.fits
            if c.fits == nxt.fits:  # the next group's fastest is outside this group's tie
                assert nxt.step_s > lead.step_s * (1 + auto.TIE)
    for c in roomy:
        assert c.samples_per_s == pytest.approx(BATCH / c.step_s)


def _fake(step_s: float, devices: int, peak: int, fits: bool = True):
    return auto.Candidate(
        kind="pipeline", devices=devices, stages=devices, microbatches=1, schedule="1f1b",
        recompute=False, replicas=1, split=(1,) * devices, peak_bytes=(peak,) * devices,
        worst_device=0, worst_bytes={}, fits=fits, problem=None, step_s=step_s,
        samples_per_s=1 / step_s, bubble=0.0, comm_bytes_per_step=0, memory=None,
    )  # fmt: skip


def test_ties_share_a_rank_in_a_deterministic_order():
    """Steps within 3% of a group's fastest tie: one rank ('=1'), fewest devices then smallest
    peak first, whatever order the candidates came in; a step outside the tie starts the next
    rank at its position (1, =2, =2, 4); non-fitting candidates come after every fitting one."""
    a = _fake(1.00, 4, 10)  # the fastest
    b = _fake(1.02, 3, 20)  # 2% slower, fewer devices: listed first
    c = _fake(1.029, 3, 10)  # same devices, smaller peak: first of all
    d = _fake(1.05, 2, 5)  # 5% slower than a: a rank of its own
    e = _fake(1.06, 2, 6)  # within 3% of d
    f = _fake(0.5, 1, 1, fits=False)  # fastest, but does not fit
    cands = [a, b, c, d, e, f]
    want = [(c, "=1"), (b, "=1"), (a, "=1"), (d, "=4"), (e, "=4"), (f, "6")]
    for perm in (cands, cands[::-1], [e, a, f, c, d, b]):
        got = auto.rank(perm)
        assert [(x.step_s, x.rank_label) for x in got] == [(x.step_s, r) for x, r in want]
    assert [x.rank_label for x in auto.rank(cands, tie=0.0)] == ["1", "2", "3", "4", "5", "6"]
    text = auto.table(auto.rank(cands))
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["=1"] * 3 + ["=4"] * 2 + ["6"]
    with pytest.raises(PlanError):
        auto.rank(cands, tie=1.5)


def test_devices_that_outnumber_the_cores_share_them(graph):
    """On C cores with T threads a device, a setup of K devices with K T > C runs its busy
    devices at C / (T x busy) of their rate: no faster than on a core each, no slower than
    all of them sharing all the time; one-device setups and machines with a core per device
    are predicted as before, and data parallelism (always all busy) exactly K T / C slower."""
    own = search(graph, Workload(batch=BATCH), devices=4, budget=None, rates=RATES)
    assert search(graph, Workload(batch=BATCH), devices=4, budget=None, rates=RATES, cores=4) == own
    shared = search(graph, Workload(batch=BATCH), devices=4, budget=None, rates=RATES, cores=2)
    by_key = {tuple(sorted(c.config().items())): c for c in own}
    for c in shared:
        o = by_key[tuple(sorted(c.config().items()))]
        assert c.peak_bytes == o.peak_bytes
        if c.devices <= 2:
            assert c.step_s == pytest.approx(o.step_s, rel=1e-12)
        elif c.kind == "data-parallel" and c.microbatches == 1:
            plan = partition(graph, 1)
            st, p = plan.stages[0], memory.param_bytes(graph)
            rows = -(-BATCH // c.replicas)
            work = (st.flops_fwd + st.flops_bwd) * rows / RATES.flops_per_s + 2 * RATES.hop_s
            work += 7 * p / RATES.copy_bytes_per_s
            ring = o.step_s - work
            assert c.step_s == pytest.approx(work * c.devices / 2 + ring, rel=1e-9)
        else:
            assert o.step_s * (1 - 1e-9) <= c.step_s <= o.step_s * c.devices / 2 * (1 + 1e-9)
    # equal stages, busy most of the time (bubble 3/35): close to the K / C = 2x slowdown
    plan = partition(graph, 4)
    w = Workload(batch=BATCH, microbatches=32, schedule="1f1b", recompute=False)
    flat, _ = auto.step_time(plan, w, rates=EQUAL)
    deep, _ = auto.step_time(plan, w, rates=EQUAL, capacity=2.0)
    assert 1.8 < deep / flat < 2.0


def test_shared_cores_timeline_follows_the_schedule_rules():
    """Processor sharing keeps the simulator's dependencies and order; with every stage alone
    (M = 1: the chain never overlaps) sharing costs nothing; the step is at least the total
    work over the capacity; with capacity >= K it is graphpart.plan.schedule.simulate."""
    from graphpart.plan import schedule as sch
    from graphpart.plan import timing

    fwd, bwd, fin, hop = [1.0, 2.0, 1.5], [2.0, 3.0, 2.5], [0.5, 0.2, 0.1], 0.25
    for kind, M in (("1f1b", 4), ("gpipe", 3), ("1f1b", 1)):
        free, tl0 = timing.pipeline_step(kind, M, fwd, bwd, fin, hop)
        ref = sch.simulate(sch.make(kind, 3, M), fwd, bwd, hop)
        assert tl0.events == ref.events
        assert timing.pipeline_step(kind, M, fwd, bwd, fin, hop, capacity=3.0)[0] == free
        step, tl = timing.pipeline_step(kind, M, fwd, bwd, fin, hop, capacity=1.0)
        work = M * (sum(fwd) + sum(bwd)) + sum(fin)
        assert step >= work - 1e-9 and step >= free - 1e-9
        ends = {(e.stage, e.action): e.end for e in tl.events}
        for e in tl.events:
            if e.action.kind == "F" and e.stage > 0:
                assert e.start >= ends[e.stage - 1, e.action] + hop - 1e-9
            if e.action.kind == "B" and e.stage < 2:
                assert e.start >= ends[e.stage + 1, e.action] + hop - 1e-9
        for k in range(3):
            mine = [e.action for e in sorted(tl.events, key=lambda e: e.start) if e.stage == k]
            assert mine == sch.make(kind, 3, M)[k]
        if M == 1:
            assert step == pytest.approx(free, rel=1e-12)


def test_plan_and_compare_projection_agree(graph):
    """compare's projection (graphpart.tools.compare.project: the workers' measured busy
    seconds through the simulator) and plan --auto's step_time use one model
    (graphpart.plan.timing): fed the stage times plan --auto predicts, as a machine with a core
    per stage would measure them, the projection gives plan --auto's step to 1e-9; on a
    machine that shares its cores (2 cores, 4 stages), fed the busy times the shared timeline
    says the workers would measure, it is at most 20% slower than plan --auto's step (the busy
    clocks cannot say when the stages waited for a core, so the projection spreads it evenly)."""
    from graphpart.plan import timing
    from graphpart.run.session import make_config
    from graphpart.tools.compare.project import project
    from graphpart.tools.compare.runner import Outcome

    steps, K = 5, 4
    plan = partition(graph, K, "balanced")
    for kind, M in (("1f1b", 8), ("gpipe", 4), ("1f1b", 2)):
        cfg = make_config(overrides={
            "model.hidden": SIZES[1:-1], "train.batch_size": BATCH, "pipeline.stages": K,
            "pipeline.microbatches": M, "pipeline.schedule": kind,
        })  # fmt: skip
        rows = BATCH / M
        fwd = [st.flops_fwd * rows / RATES.flops_per_s + RATES.hop_s for st in plan.stages]
        bwd = [st.flops_bwd * rows / RATES.flops_per_s + RATES.hop_s for st in plan.stages]
        fin = [7 * memory.param_bytes(st.graph) / RATES.copy_bytes_per_s for st in plan.stages]
        hop = RATES.transfer_s(rows * max(st.output_width for st in plan.stages) * 4)
        for capacity in (None, 2.0):
            want, tl = auto.step_time(
                plan,
                Workload(batch=BATCH, microbatches=M, schedule=kind, recompute=False),
                rates=RATES,
                capacity=capacity,
            )
            # what the workers' busy clocks read: each action's duration on this machine
            busy_f = [sum(e.end - e.start for e in tl.events if e.stage == k
                          and e.action.kind == "F") for k in range(K)]  # fmt: skip
            busy_b = [sum(e.end - e.start for e in tl.events if e.stage == k
                          and e.action.kind == "B") for k in range(K)]  # fmt: skip
            if capacity is None:
                assert busy_f == pytest.approx([f * M for f in fwd])
                finish = fin
            else:  # updates run after the last action, while other stages may still work
                finish = [f * K / capacity for f in fin]
            stats = [
                {"forward_s": f * steps, "backward_s": b * steps, "finish_s": x * steps}
                for f, b, x in zip(busy_f, busy_b, finish, strict=True)
            ]
            o = Outcome(None, cfg, "ran", summary={"steps": steps, "stage_stats": stats})
            got = project(o, hop)
            # shared: the projection spreads each stage's contention evenly over its actions
            # (a busy clock cannot say when it waited), so it errs slow by up to ~20%
            tol = 1e-9 if capacity is None else 0.20
            assert want * (1 - 1e-9) <= got.step_s <= want * (1 + tol), (kind, M, capacity)
            if capacity is None:
                same, _ = timing.pipeline_step(kind, M, fwd, bwd, fin, hop)
                assert same == pytest.approx(want, rel=1e-12)


def test_equal_stage_times_give_the_textbook_bubble(graph):
    cands = search(graph, Workload(batch=BATCH), devices=4, budget=None, rates=EQUAL)
    pipes = [c for c in cands if c.kind == "pipeline" and c.schedule in ("gpipe", "1f1b")]
    assert pipes
    for c in pipes:
        K, M = c.stages, c.microbatches
        assert c.bubble == pytest.approx((K - 1) / (M + K - 1), abs=1e-9)
        assert c.step_s == pytest.approx(2 * (M + K - 1) * 1e-3, rel=1e-9)
    # the same through step_time on any plan with equal stage times
    for K, M, kind in ((2, 8, "gpipe"), (4, 4, "1f1b"), (3, 1, "1f1b")):
        step, tl = auto.step_time(
            partition(graph, K),
            Workload(batch=BATCH, microbatches=M, schedule=kind, recompute=False),
            rates=EQUAL,
        )
        assert tl.bubble == pytest.approx((K - 1) / (M + K - 1))
        assert step == pytest.approx(tl.makespan)


def test_accumulation_costs_the_fixed_cost_m_times(graph):
    cands = search(graph, Workload(batch=BATCH), devices=1, budget=None, rates=RATES)
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
    cands = search(graph, Workload(batch=batch), devices=4, budget=None, rates=RATES)
    plan = partition(graph, 1)
    st = plan.stages[0]
    p = memory.param_bytes(graph)
    for K in (2, 3, 4):
        dp = _find(cands, kind="data-parallel", replicas=K, microbatches=1)
        rows = -(-batch // K)
        want = (
            (st.flops_fwd + st.flops_bwd) * rows / RATES.flops_per_s
            + 2 * RATES.hop_s
            + (K - 1) * (2 * RATES.hop_s + 4.5 * p / K / RATES.copy_bytes_per_s)
            + 7 * p / RATES.copy_bytes_per_s
        )
        assert dp.step_s == pytest.approx(want, rel=1e-9)
        assert (
            dp.peak_bytes[0]
            == memory.predict_data_parallel(plan, K, Workload(batch=batch), channels=True)
            .stages[0]
            .total
        )


def test_small_batches_and_few_layers_limit_the_choices():
    g = mlp([8, 8, 4])  # two layers
    cands = search(g, Workload(batch=3), devices=8, budget=None, rates=RATES)
    assert max(c.stages for c in cands) == 2
    assert max(c.replicas for c in cands) == 3
    assert all(c.microbatches <= 3 for c in cands)


def test_reports(roomy):
    text = auto.table(roomy, 5)
    lines = text.splitlines()
    assert len(lines) == 2 + 5
    assert "samples/s" in lines[0] and "peak per device" in lines[0] and "comm/step" in lines[0]
    assert lines[2].split()[0] == roomy[0].rank_label in ("1", "=1")
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
        w = Workload(batch=kw.pop("batch"))
        with pytest.raises(PlanError):
            search(graph, w, **kw)
    for bad in (
        dict(flops_per_s=0.0),
        dict(flops_per_s=math.nan),
        dict(copy_bytes_per_s=-1.0),
        dict(hop_s=math.inf),
        dict(hop_s=-1e-6),
        dict(action_s=-1.0),
        dict(call_s=-1e-3),
        dict(call_s=math.nan),
    ):
        with pytest.raises(PlanError, match="Rates\\."):
            Rates(**(dict(flops_per_s=1e9, copy_bytes_per_s=1e9, hop_s=0.0) | bad))


def test_search_is_fast():
    g = mlp([64, 256, 256, 256, 256, 10])  # five layers
    t = time.perf_counter()
    cands = search(g, Workload(batch=256), devices=4, budget=4 * 2**20, rates=RATES)
    took = time.perf_counter() - t
    assert took < 1.0, f"search took {took:.2f} s"
    assert len(cands) > 50


def test_two_d_is_replicated_pipelines_with_their_memory_and_ring(graph):
    """A 2-d candidate is R replicas of a K-stage pipeline on R x K devices: its memory is
    predict_data_parallel's for the K-stage plan, and its step the replica's pipeline on
    ceil(B / R) rows (the R pipelines sharing the capacity) plus the slowest stage's ring."""
    cands = search(graph, Workload(batch=BATCH), devices=4, budget=None, rates=RATES)
    c = _find(cands, kind="2-d", replicas=2, stages=2, microbatches=4, schedule="1f1b",
              recompute=False)  # fmt: skip
    plan = partition(graph, 2, "balanced")
    w = Workload(batch=BATCH, microbatches=4, schedule="1f1b")
    pred = memory.predict_data_parallel(plan, 2, w, channels=True)
    assert c.peak_bytes == tuple(s.total for s in pred.stages) and c.devices == 4
    pipe, _ = auto.step_time(plan, Workload(batch=BATCH // 2, microbatches=4), rates=RATES)
    ring = max(RATES.ring_s(memory.param_bytes(st.graph), 2) for st in plan.stages)
    assert c.step_s == pytest.approx(pipe + ring, rel=1e-12)
    assert c.config()["pipeline.data_parallel"] == 2 and c.config()["pipeline.stages"] == 2
    zb = _find(cands, kind="2-d", replicas=2, stages=2, microbatches=4, schedule="zb-h1",
               recompute=False)  # fmt: skip
    rows = auto.table([c, zb]).splitlines()[2:]  # the table names each one's schedule
    assert " 1f1b " in rows[0] and " zb-h1 " in rows[1]


def test_measured_layer_times_replace_flops_and_the_streamed_update(graph):
    """With `Rates.layers`, an action's time is its stage's layers' measured seconds at the
    micro-batch's rows (plus, on a stage of a pipeline, the per-action cost: a message from
    another process), and an update the layers' measured update: one device runs F, then
    I + W, then its update, with no per-action cost (calls in its own process, which the
    layer times were measured through); a data-parallel replica the same on its share of
    the rows, then the ring; an explicit `Rates.action_s` is charged everywhere."""
    ids = tuple(graph.layers)
    n = len(ids)
    lt = LayerTimes(
        ids,
        (16, 32, 64),
        tuple(tuple((r * 1e-4, r * 2e-4, r * 3e-4) for _ in ids) for r in (16, 32, 64)),
        tuple(1e-3 for _ in ids),
    )
    rates = replace(RATES, layers=lt)
    one = partition(graph, 1)
    step, _ = auto.step_time(one, Workload(batch=64), rates=rates)
    assert step == pytest.approx(n * 64 * 6e-4 + n * 1e-3, rel=1e-12)
    fixed = replace(rates, action_s=2e-4)
    step, _ = auto.step_time(one, Workload(batch=64), rates=fixed)
    assert step == pytest.approx(n * 64 * 6e-4 + 2 * 2e-4 + n * 1e-3, rel=1e-12)
    two = partition(graph, 2, "balanced")
    fwd, bwd, igrad, wgrad, _ = auto._stage_times(two, Workload(batch=64, microbatches=2), rates)
    for st, f, b, i, w in zip(two.stages, fwd, bwd, igrad, wgrad, strict=True):
        k = len(st.layers)
        assert f == pytest.approx(k * 32e-4 + RATES.hop_s)
        assert i == pytest.approx(k * 64e-4 + RATES.hop_s)
        assert w == pytest.approx(k * 96e-4 + RATES.hop_s)
        assert b == pytest.approx(k * 160e-4 + RATES.hop_s)
    p = memory.param_bytes(graph)
    dp = auto._data_parallel_time(one, 2, Workload(batch=64), rates)
    assert dp == pytest.approx(n * 32 * 6e-4 + RATES.ring_s(p, 2) + n * 1e-3, rel=1e-12)


def test_ring_all_reduce_counts_hops_and_copies():
    """R - 1 reduce-scatter and R - 1 all-gather steps of nbytes / R: a hop each, and 4.5
    copies of the chunk a step (send, add; send, take); one replica has no ring."""
    r = Rates(flops_per_s=1.0, copy_bytes_per_s=1e9, hop_s=1e-4)
    assert r.ring_s(4e9, 1) == 0.0
    assert r.ring_s(4e9, 2) == pytest.approx(2e-4 + 4.5 * 2.0)
    assert r.ring_s(4e9, 4) == pytest.approx(3 * (2e-4 + 4.5 * 1.0))
    assert replace(r, ring_copies=2.0).ring_s(4e9, 2) == pytest.approx(2e-4 + 2.0 * 2.0)
    with pytest.raises(PlanError, match="ring_copies"):
        replace(r, ring_copies=-1.0)


def test_a_measured_ring_latency_is_the_hop_and_the_action_cost():
    """Without a ring measured, a transfer is `hop_s` (a hop less one copy) plus one copy and
    an action costs `hop_s`; with `ring_hop_s` (a message's latency between busy processes)
    a transfer is that latency plus two copies and an action costs it; `action_s` wins."""
    r = Rates(flops_per_s=1.0, copy_bytes_per_s=1e9, hop_s=2e-4)
    assert r.transfer_s(1e6) == pytest.approx(2e-4 + 1e-3)
    assert r.per_action_s == pytest.approx(2e-4)
    ring = replace(r, ring_hop_s=3e-5)
    assert ring.transfer_s(1e6) == pytest.approx(3e-5 + 2e-3)
    assert ring.per_action_s == pytest.approx(3e-5)
    assert replace(ring, action_s=1e-5).per_action_s == pytest.approx(1e-5)


def test_setups_on_several_devices_are_timed_at_the_rates_measured_together(graph):
    """`Rates.busy(n)` is the rates measured with the fewest devices busy at or above n (the
    most measured for more, the rates themselves for one); search times a setup on n devices
    at `busy(n)`: slower
    together-rates slow the pipelines and the replicas, never the one-device setups."""
    slow = replace(RATES, flops_per_s=RATES.flops_per_s / 2, copy_bytes_per_s=1e9)
    rates = replace(RATES, together=((2, slow),))
    assert rates.busy(1) is rates and rates.busy(2) is slow and rates.busy(5) is slow
    four = replace(slow, flops_per_s=1e9)
    more = replace(RATES, together=((2, slow), (4, four)))
    assert [more.busy(n) for n in (2, 3, 4, 9)] == [slow, four, four, four]
    assert RATES.busy(3) is RATES
    alone = search(graph, Workload(batch=BATCH), devices=2, budget=None, rates=RATES)
    both = search(graph, Workload(batch=BATCH), devices=2, budget=None, rates=rates)
    key = lambda c: (c.kind, c.stages, c.microbatches, c.schedule, c.recompute, c.chunks)  # noqa: E731
    before = {key(c): c.step_s for c in alone}
    assert before.keys() == {key(c) for c in both}
    for c in both:
        if c.devices == 1:
            assert c.step_s == before[key(c)]
        else:
            assert c.step_s > before[key(c)], key(c)
    with pytest.raises(PlanError, match="together"):
        replace(RATES, together=((2, rates),))  # the together-rates have none of their own
    with pytest.raises(PlanError, match="increasing counts"):
        replace(RATES, together=((4, slow), (2, slow)))


def test_a_step_on_several_devices_pays_the_drivers_call_once(graph):
    """Rates.call_s is added once to every setup on more than one device (its Ray workers'
    calls and replies), to none on one device (run in process)."""
    call = 1.5e-3
    few = (1, 2)  # micro-batch choices: every kind, in a fraction of the search's time
    alone = search(graph, Workload(batch=BATCH), devices=3, budget=None, rates=RATES,
                   microbatch_choices=few)  # fmt: skip
    called = search(graph, Workload(batch=BATCH), devices=3, budget=None,
                    rates=replace(RATES, call_s=call), microbatch_choices=few)  # fmt: skip

    def key(c):
        return (c.kind, c.stages, c.replicas, c.microbatches, c.schedule, c.recompute, c.chunks)

    before = {key(c): c.step_s for c in alone}
    assert before.keys() == {key(c) for c in called}
    kinds = set()
    for c in called:
        extra = call if c.devices > 1 else 0.0
        assert c.step_s == pytest.approx(before[key(c)] + extra, rel=1e-12), key(c)
        kinds.add((c.kind, c.devices > 1))
    assert {("single", False), ("pipeline", True), ("data-parallel", True)} <= kinds


def test_a_one_device_setup_is_timed_at_every_cores_rates(graph):
    """Rates.whole (measured with every core's threads, as a one-device run in process uses
    them) times the one-device setups, and only them; it holds no rates of its own."""
    fast = replace(RATES, flops_per_s=2 * RATES.flops_per_s)
    w = Workload(batch=BATCH)
    few = (1, 2)
    alone = search(graph, w, devices=2, budget=None, rates=RATES, cores=2, threads=1,
                   microbatch_choices=few)  # fmt: skip
    both = search(graph, w, devices=2, budget=None, rates=replace(RATES, whole=fast),
                  microbatch_choices=few)  # fmt: skip
    solo = search(graph, w, devices=1, budget=None, rates=fast, microbatch_choices=few)

    def key(c):
        return (c.kind, c.stages, c.replicas, c.microbatches, c.schedule, c.recompute, c.chunks)

    before, whole = {key(c): c.step_s for c in alone}, {key(c): c.step_s for c in solo}
    for c in both:
        want = whole[key(c)] if c.devices == 1 else before[key(c)]
        assert c.step_s == pytest.approx(want, rel=1e-12), key(c)
    assert replace(RATES, whole=fast).one_device is fast and RATES.one_device is RATES
    with pytest.raises(PlanError, match="Rates.whole"):
        replace(RATES, whole=replace(fast, whole=fast))
