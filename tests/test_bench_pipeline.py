"""The pipeline benchmark measures what it says and feeds the simulator consistently.

Contract: `call_overhead_s` spreads a stage's CPU time beyond its busy time and its polling
while it waited (`wait_cpu`) over its calls (its schedule's actions and finish: 2M + 1 with
whole backwards, 3M + 1 split) and never goes negative; `predict_step` is the schedule
simulator's makespan plus each stage's finish after its last action (GPipe on equal stages:
(M + K - 1)(f + b) + finish, bubble (K - 1)/(M + K - 1)); the measured bubble is the stages' idle
share by wall clock (blocked on a neighbour's tensor, or no step call running), never above the
share outside the actions' work; a tiny `run` on the test session's Ray returns every figure for
every engine (push, shm), the prediction with per-call cost is never below the kernels-only
one, and the report prints a row per configuration; each configuration is followed at once by
the sgemm rate at its shapes and (default transport) its torch peer, whose figure every row of
that configuration is paired with. The virtual-stage rows (interleaved 1F1B,
ZB-V: 2 devices of 2 chunks) have per-virtual-stage times, a measured bubble per device and the
virtual simulator's step. The data-parallel row has, overlap on and (same workers) off, each
replica's all-reduce figures and the replicas' critical path (the communication after the
last replica's backward, within what the replicas waited for), and the share of the
unhidden all-reduce the overlap left exposed. With `rounds`, `run` adds the schedules in
turns on one engine an M, and the report section (e) (tests/test_bench_pipeline_rounds.py
holds their contract).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re

import pytest

from graphpart.tools import bench_pipeline as bp
from graphpart.tools.bench_pipeline.rates import stage_matmuls
from graphpart.tools.bench_pipeline.report import _sched
from graphpart.tools.bench_pipeline.throughput import idle_share


def test_call_overhead_spreads_cpu_beyond_busy_time_over_the_calls():
    timed = {
        "steps": 4,
        "stage_cpu_ms_per_step": [30.0, 10.0],
        "busy_s": [
            {"F": 0.040, "B": 0.060, "step": 0.004},  # 26 ms a step of work
            {"F": 0.020, "B": 0.030, "step": 0.002},
        ],
    }  # 13 ms: more than its CPU
    over = bp.call_overhead_s(timed, "1f1b", 2, microbatches=3)  # 7 calls a step
    assert over[0] == pytest.approx((30.0 - 26.0) / 1e3 / 7)
    assert over[1] == 0.0
    split = bp.call_overhead_s(timed, "zb-h1", 2, microbatches=3)  # 10 calls a step
    assert split[0] == pytest.approx((30.0 - 26.0) / 1e3 / 10)
    timed["busy_s"][0]["wait_cpu"] = 0.012  # 3 ms a step polling for tensors: not a call's cost
    assert bp.call_overhead_s(timed, "1f1b", 2, microbatches=3)[0] == pytest.approx(1e-3 / 7)


@pytest.mark.parametrize("k,m", [(2, 1), (2, 4), (3, 2), (4, 8)])
def test_predict_step_gpipe_equal_stages(k, m):
    f, b, fin = 1.0, 2.0, 0.5
    pred = bp.predict_step("gpipe", m, [f] * k, [b] * k, [fin] * k, comm=0.0)
    assert pred["makespan_s"] == pytest.approx((m + k - 1) * (f + b))
    assert pred["step_s"] == pytest.approx((m + k - 1) * (f + b) + fin)
    assert pred["bubble"] == pytest.approx((k - 1) / (m + k - 1))


def test_idle_share_is_waits_and_time_outside_the_step_call():
    busy = [{"wait": 0.1, "span": 0.9}, {"wait": 0.0, "span": 1.0}]
    assert idle_share(busy, 1.0) == pytest.approx((0.1 + 0.1 + 0.0) / 2)
    assert idle_share([{"wait": 0.0, "span": 2.0}], 2.0) == 0.0


def test_tiny_run_returns_every_figure(ray_session):
    res = bp.run(
        sizes=(16, 32, 32, 8),
        batch=16,
        dtype="float32",
        microbatches=(1, 2),
        schedules=("1f1b", "gpipe"),
        warmup=1,
        steps=3,
        transfer_n=10,
        with_torch=False,
        rounds=1,
    )
    t = res["transfer"]
    for key in (
        "empty_call_ms",
        "push_round_trip_ms",
        "shm_hop_ms",
    ):
        assert t[key] > 0 and math.isfinite(t[key]), key
    assert t["bytes"] == 256 * 1024 * 4
    assert [r["threads"] for r in res["single"]] == [os.cpu_count() or 1, 1]
    rows = res["pipeline"]
    assert {(r["engine"], r["schedule"], r["microbatches"]) for r in rows} == {
        (e, s, m) for e in ("push", "shm") for s in ("1f1b", "gpipe") for m in (1, 2)
    }
    for r in rows:
        assert r["step_s_median"] > 0 and r["samples_per_s"] > 0
        assert r["predicted_step_s"] >= r["predicted_kernels_step_s"] > 0
        assert 0.0 <= r["predicted_bubble"] < 1.0
        assert 0.0 <= r["measured_bubble"] < 1.0  # the stages' idle share of the mean step
        # idle (blocked, or no step call running) is a part of the time outside the work
        assert r["measured_bubble"] <= r["not_computing"] + 1e-9
        # a fresh engine a configuration: each stage's resident peak over its baseline
        assert len(r["resident_growth"]) == 2 and all(v >= 0 for v in r["resident_growth"])
        for b in r["busy_s"]:
            assert 0 <= b["wait"] < b["span"] <= r["steps"] * r["step_s_mean"] * 1.01
        assert len(r["call_overhead_ms"]) == 2
        # this row's own CPU beyond its busy time, over its own 2M + 1 actions a step
        assert r["call_overhead_ms"] == pytest.approx(
            [1e3 * v for v in bp.call_overhead_s(r, r["schedule"], 2, r["microbatches"])]
        )
    assert len(res["targets"]["throughput_within_10pct_of_simulator"]) == len(rows)
    report = bp.format_report(res)
    for engine in ("push", "shm"):
        assert len(re.findall(rf"^  {engine} +2 (1f1b|gpipe) +[12] ", report, re.M)) == 4
    assert "shm hop under 0.5 ms:" in report
    assert "torch.distributed.pipelining: not measured" in report
    # --rounds: the two schedules in turns on one engine an M, each M's ratio to 1F1B's
    assert [r["microbatches"] for r in res["rounds"]] == [1, 2]
    assert all(len(r["schedules"]["gpipe"]["ratio"]) == 1 for r in res["rounds"])
    assert "(e) schedules in turns on the same workers" in report
    # the one-thread sgemm rate at each stage's shapes, beside every pipeline row
    assert "sgemm on one thread, measured now" in report
    for r in rows:
        assert len(r["compute_vs_matmuls"]) == 2 and all(c > 0 for c in r["compute_vs_matmuls"])
        # the same with the OS's CPU time of the calls: not above the wall-time figure, but for
        # the thread clock's own accounting (a few % on calls of microseconds, as here)
        for cpu, wall in zip(r["compute_cpu_vs_matmuls"], r["compute_vs_matmuls"], strict=True):
            assert 0 < cpu <= wall * 1.1
        assert all(c > 0 for c in r["compute_vs_cold_matmuls"])
        assert all(g > 0 for g in r["sgemm_cold_gflops"])
        assert all(g > 0 for g in r["sgemm_gflops"])
        assert min(r["matmul_fwd_ms"]) > 0 and min(r["matmul_bwd_ms"]) > 0
    dp = res["data_parallel"]  # graphpart's data parallelism beside the pipelines
    assert dp["replicas"] == 2 and dp["samples_per_s"] > 0 and dp["sgemm_gflops"] > 0
    assert len(dp["allreduce_ms"]) == 2 and all(t > 0 for t in dp["allreduce_ms"])
    # the communication after the last replica's backward: within the replicas' waits
    assert 0 <= dp["critical_exposed_ms"] <= sum(dp["exposed_ms"]) + 1e-9
    assert 0 < dp["critical_own_ms"] <= sum(dp["allreduce_ms"]) + 1e-9
    assert dp["replica_wait_ms"] >= 0
    # the same workers with the all-reduce after the backward: all of it after the last one
    off = dp["overlap_off"]
    assert off["step_s_median"] > 0 and off["critical_exposed_ms"] > 0
    assert dp["exposed_of_unhidden"] == pytest.approx(
        dp["critical_exposed_ms"] / off["critical_exposed_ms"]
    )
    assert dp["comm_of_unhidden"] == pytest.approx(dp["critical_comm_ms"] / off["critical_comm_ms"])
    assert dp["critical_comm_ms"] >= dp["critical_exposed_ms"]  # and the work inside the backward
    assert "all-reduce " in report and "on the critical path" in report
    assert all(r["sgemm_gflops"] > 0 for r in res["single"])
    assert "data parallel, 2 replicas" in report and "torch DDP: not measured" in report
    proj = res["projection"]["rows"]
    assert [r["stages"] for r in proj] == [1, 2]  # three layers: at most three stages
    assert proj[0]["bubble"] == pytest.approx(0.0) and proj[1]["samples_per_s"] > 0
    # one stage does all the work: the projection is the sum of the measured layer times
    assert proj[0]["step_s"] > 0


def test_virtual_stage_rows(ray_session):
    from graphpart.tools.bench_pipeline.virtual_rows import measure_virtual

    rows = measure_virtual(
        (16, 32, 32, 32, 8), 16, "float32", ("1f1b", "interleaved", "zbv"), (2, 4), 1, 2, 1e-4
    )
    assert [(r["schedule"], r["microbatches"]) for r in rows] == [
        ("interleaved", 2), ("interleaved", 4), ("zbv", 2), ("zbv", 4),
    ]  # fmt: skip
    for r in rows:
        assert r["stages"] == 2 and r["chunks"] == 2 and r["stage_split"] == [1, 1, 1, 1]
        assert len(r["fwd_ms"]) == len(r["bwd_ms"]) == len(r["compute_cpu_ms"]) == 4
        assert min(r["fwd_ms"]) > 0 and min(r["bwd_ms"]) > 0
        assert r["samples_per_s"] > 0 and r["predicted_step_s"] > 0
        assert 0.0 <= r["measured_bubble"] < 1.0 and 0.0 <= r["predicted_bubble"] < 1.0
        assert r["measured_bubble"] <= r["not_computing"] + 1e-9
        assert len(r["resident_growth"]) == 2  # a device's, its chunks in one process
    # the report names a row's chunks a device
    assert [_sched(r) for r in rows[::2]] == ["interleaved (v=2)", "zbv (v=2)"]


def test_each_configuration_is_followed_by_its_rate_and_its_torch_peer(ray_session, monkeypatch):
    """Right after each pipeline configuration (before the next starts): the sgemm rate at its
    shapes, then, on the default transport, its torch peer twice and itself again (A B B A,
    each side its better block); every K=2 row of the same config (either transport) gets its
    ratio to that peer. Torch itself is stood in for: the pairing
    is what is tested (the peers' own runs: the torch tests below)."""
    from graphpart.tools.bench_pipeline import driver

    log: list[tuple[str, str, int]] = []
    real_costs = driver.add_matmul_costs

    def costs(sizes, batch, dtype, rows):
        log.extend(("rate", r["schedule"], r["microbatches"]) for r in rows)
        return real_costs(sizes, batch, dtype, rows)

    def peer(sizes, batch, row, warmup, steps):
        log.append(("torch", row["schedule"], row["microbatches"]))
        keys = ("stage_split", "schedule", "microbatches")
        return {"samples_per_s": 100.0, "step_s_median": 0.16, **{k: row[k] for k in keys}}

    spec = importlib.util.find_spec
    monkeypatch.setattr(driver, "add_matmul_costs", costs)
    monkeypatch.setattr(driver, "torch_peer", peer)
    one = {"samples_per_s": 50.0, "step_s_median": 0.3}
    monkeypatch.setattr(driver, "measure_torch_single", lambda s, b, rows, *a: [one for _ in rows])
    monkeypatch.setattr(driver, "run_torch_ddp", lambda *a: {"samples_per_s": 1.0})
    monkeypatch.setattr(
        driver.importlib.util, "find_spec", lambda n, *a: object() if n == "torch" else spec(n, *a)
    )
    res = bp.run(
        sizes=(16, 32, 32, 8), batch=16, microbatches=(2,), schedules=("1f1b",), warmup=1,
        steps=2, transfer_n=10, four_stages=False, data_parallel=0, transports=("push", "shm"),
    )  # fmt: skip
    # push first, each config then its rate; shm last, each config then its rate, its peer
    # twice and itself again (A B B A), the rate taken again where that second block is kept
    want = [("rate", "1f1b", 2)]
    for r in res["pipeline"][1:]:
        m = r["microbatches"]
        want += [("rate", "1f1b", m), ("torch", "1f1b", m), ("torch", "1f1b", m)]
        a1, a2 = r["block_step_ms"]
        if a2 < a1:
            want.append(("rate", "1f1b", m))
        assert r["step_s_median"] * 1e3 == pytest.approx(min(a1, a2))  # the better block
        assert r["other_block"]["step_s_median"] * 1e3 == pytest.approx(max(a1, a2))
    assert log == want
    assert [r["engine"] for r in res["pipeline"]] == ["push", "shm"]
    for r in res["pipeline"]:
        assert r["vs_torch"] == pytest.approx(r["samples_per_s"] / 100.0)
    for r in res["single"]:  # one process: its better block of two, against the peer's
        assert len(r["block_step_ms"]) == 2
        assert r["vs_torch"] == pytest.approx(r["samples_per_s"] / 50.0)


@pytest.mark.ray
def test_torch_pipelining_peer_runs_when_torch_is_installed():
    pytest.importorskip("torch")
    r = bp.run_torch_pipeline([16, 32, 32, 8], [2, 1], 16, "1f1b", 2, 1, 3)
    assert r["samples_per_s"] > 0 and r["step_s_median"] > 0 and r["steps"] == 3
    # each rank's resident peak over its baseline, as the OS counts it
    assert len(r["resident_growth"]) == 2 and all(v >= 0 for v in r["resident_growth"])


@pytest.mark.ray
@pytest.mark.parametrize("schedule", ["interleaved", "zbv"])
def test_torch_peers_with_virtual_stages_run_when_torch_is_installed(schedule):
    """torch's ScheduleInterleaved1F1B and ScheduleZBVZeroBubble: two ranks, two stages each
    (interleaved: 0 and 2 on rank 0; the V: 0 and 3), rank 0's figures."""
    pytest.importorskip("torch")
    r = bp.run_torch_pipeline([16, 32, 32, 32, 8], [1, 1, 1, 1], 16, schedule, 4, 1, 2, chunks=2)
    assert r["ranks"] == 2 and r["samples_per_s"] > 0 and r["steps"] == 2
    with pytest.raises(ValueError, match="chunks=3: must divide the 4 stages"):
        bp.run_torch_pipeline([16, 32, 32, 32, 8], [1, 1, 1, 1], 16, schedule, 4, 1, 2, chunks=3)


@pytest.mark.ray
def test_torch_ddp_and_one_process_peers_run_when_torch_is_installed():
    pytest.importorskip("torch")
    d = bp.run_torch_ddp([16, 32, 8], 2, 16, 1, 3)
    assert d["mode"] == "ddp" and d["ranks"] == 2 and d["samples_per_s"] > 0
    assert len(d["resident_growth"]) == 2
    one = bp.run_torch_single([16, 32, 8], 1, 16, 1, 3)
    assert one["mode"] == "single" and one["ranks"] == 1 and one["step_s_median"] > 0


def test_stage_matmuls_price_each_stage_at_the_measured_rate():
    """FLOPs per micro-batch as the CPU backend runs them: forward, dW, and dx except for the
    model's first layer; the cost is those FLOPs at a positive one-thread rate."""
    ms = stage_matmuls([8, 16, 16, 4], [2, 1], 4, repeats=2)
    flop = lambda i, o: 2.0 * 4 * i * o / 1e9  # noqa: E731
    assert ms[0].fwd_gflop == pytest.approx(flop(8, 16) + flop(16, 16))
    assert ms[0].bwd_gflop == pytest.approx(flop(8, 16) + 2 * flop(16, 16))  # no dx for layer 1
    assert ms[1].bwd_gflop == pytest.approx(2 * flop(16, 4))
    assert all(m.fwd_ms > 0 and m.bwd_ms > 0 and m.gflops > 0 for m in ms)
    # the same products timed with operands out of cache: a positive rate too
    assert all(m.fwd_cold_ms > 0 and m.bwd_cold_ms > 0 and m.cold_gflops > 0 for m in ms)
