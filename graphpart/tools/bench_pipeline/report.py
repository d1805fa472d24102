"""The pipeline benchmark's plain-text report."""

from __future__ import annotations

from typing import Any

from graphpart.tools.bench_pipeline.rounds import format_rounds


def format_report(res: dict[str, Any]) -> str:
    t, m, mach = res["transfer"], res["model"], res["machine"]
    lines = [
        f"machine: {mach['cpus']} cpus, Ray {mach['ray']}, load avg "
        f"{mach['load_avg_start'][0]:.2f} -> {mach['load_avg_end'][0]:.2f}",
        f"graphpart's BLAS: {mach.get('graphpart_blas', 'not recorded')}",
        f"(a) boundary transfer of {t['shape'][0]}x{t['shape'][1]} float32 "
        f"({t['bytes'] / 2**20:.0f} MiB), median of {t['samples']}:",
        f"  empty actor call                     {t['empty_call_ms']:7.3f} ms",
        f"  push: actor a calls actor b with it  {t['push_hop_ms']:7.3f} ms "
        f"(driver->a->b->a->driver {t['push_round_trip_ms']:.3f} ms, less an empty call)",
        f"  shm channel, one hop (a -> b -> a / 2) {t['shm_hop_ms']:7.3f} ms",
        f"  target < {t['target_ms']:g} ms for one hop on shm: "
        f"{'met' if t['target_met'] else 'NOT met'}",
        f"(b) MLP {'-'.join(map(str, m['sizes']))}, batch {m['batch']}, {m['dtype']}, "
        "adam; samples/s from the median step:",
    ]
    if "torch_skipped" not in res:
        lines.append(
            "  each pair with a torch peer ran graphpart, the peer, the peer, graphpart (A B B A),"
            " back to back; each side's figure is its better block of the two"
        )
    mm = res.get("matmuls", {})
    if mm:
        lines.append(
            "  sgemm on one thread, measured now at the products each stage runs (GFLOP/s, "
            "stage 0 | stage 1; by micro-batch rows): "
            + "; ".join(
                f"{rows} rows " + " | ".join(f"{s['gflops']:.0f}" for s in st)
                for rows, st in sorted(mm.items(), key=lambda kv: -int(kv[0]))
            )
        )
    torch1 = {t["threads"]: t for t in res.get("torch_single", [])}
    for r in res["single"]:
        tp = torch1.get(r["threads"])
        lines.append(
            f"  one process, {r['threads']} BLAS thread(s): {r['samples_per_s']:8.0f} "
            f"samples/s ({r['step_s_median'] * 1e3:.1f} ms/step, "
            f"{r['driver_cpu_ms_per_step']:.1f} ms CPU/step; other processes "
            f"{r.get('other_cpu_cores', float('nan')):.2f} cores; sgemm on one thread at its "
            f"shapes {r['sgemm_gflops']:.0f} GFLOP/s)"
            + (
                f"; torch {tp['samples_per_s']:.0f} samples/s ({tp['step_s_median'] * 1e3:.1f} "
                f"ms/step): {r['vs_torch']:.2f}x torch"
                if tp
                else ""
            )
        )
    d = res.get("data_parallel")
    if d:
        tp = res.get("torch_ddp")
        lines.append(
            f"  data parallel, {d['replicas']} replicas (ring all-reduce on shm): "
            f"{d['samples_per_s']:8.0f} samples/s ({d['step_s_median'] * 1e3:.1f} ms/step; "
            f"sgemm on one thread at a replica's shapes {d['sgemm_gflops']:.0f} GFLOP/s; "
            f"all-reduce {' | '.join(f'{t:.1f}' for t in d.get('allreduce_ms', []))} ms/step, "
            f"exposed {' | '.join(f'{t:.1f}' for t in d.get('exposed_ms', []))}, "
            f"inside the backward {' | '.join(f'{t:.1f}' for t in d.get('polled_ms', []))}"
            + (
                f"; on the critical path {d['critical_comm_ms']:.1f} ms of it "
                f"({d['critical_exposed_ms']:.1f} after the last replica's backward, the rest "
                f"inside it), the others' wait for it {d['replica_wait_ms']:.1f}; overlap off: "
                f"{d['overlap_off']['step_s_median'] * 1e3:.1f} ms/step, "
                f"{d['overlap_off']['critical_comm_ms']:.1f} on the critical path: with the "
                f"overlap {d['comm_of_unhidden']:.0%} of it, {d['exposed_of_unhidden']:.0%} "
                "after the backward)"
                if "overlap_off" in d
                else ")"
            )
            + (
                f"; torch DDP (gloo, {tp['ranks']} processes) {tp['samples_per_s']:.0f} "
                f"samples/s ({tp['step_s_median'] * 1e3:.1f} ms/step): {d['vs_torch']:.2f}x torch"
                + _growths(tp.get("resident_growth"), d.get("resident_growth"))
                if tp
                else "; torch DDP: not measured"
            )
        )
    lines.append(
        "  K=2 split " + str(res["pipeline"][0]["stage_split"]) + " layers (K=4 rows: one layer "
        "a stage, 4 stages sharing the cores); (c) "
        "simulator fed this run's stage times (+ transfer as comm, + finish): "
        "'kern' the work inside each call alone, 'pred' that plus each stage's "
        "measured per-call cost (see call_overhead_s); 'bubble' the simulator's idle share, "
        "'meas.' the stages' measured one (wall clocks: blocked on a neighbour's tensor, or "
        "no step call running), 'nowork' the share not inside an action's work"
    )
    lines.append(
        f"  {'engine':9}{'K':>2} {'sched':14}{'M':>3}{'samples/s':>11}"
        f"{'vs torch':>9}{'vs 1proc':>9}"
        f"{'step ms':>9}{'kern ms':>9}{'ratio':>7}{'pred ms':>9}{'ratio':>7}"
        f"{'bubble':>8}{'meas.':>7}{'nowork':>7}  F/B ms per mb (stage 0 | stage 1); per-call ms; "
        "CPU ms/step: driver, stages; other processes' cores"
    )
    for r in res["pipeline"]:
        fb = " | ".join(f"{f:.2f}/{b:.2f}" for f, b in zip(r["fwd_ms"], r["bwd_ms"], strict=True))
        lines.append(
            f"  {r['engine']:9}{r['stages']:>2} {_sched(r):14}{r['microbatches']:>3}"
            f"{r['samples_per_s']:>11.0f}{_ratio(r.get('vs_torch')):>9}"
            f"{r['speedup_vs_best_single']:>9.2f}{r['step_s_median'] * 1e3:>9.1f}"
            f"{r['predicted_kernels_step_s'] * 1e3:>9.1f}{r['kernels_ratio']:>7.2f}"
            f"{r['predicted_step_s'] * 1e3:>9.1f}{r['throughput_ratio']:>7.2f}"
            f"{r['predicted_bubble']:>8.1%}{r.get('measured_bubble', float('nan')):>7.1%}"
            f"{r.get('not_computing', float('nan')):>7.1%}  {fb}; "
            + "/".join(f"{c:.2f}" for c in r["call_overhead_ms"])
            + f"; {r['driver_cpu_ms_per_step']:.0f}, "
            + "/".join(f"{c:.0f}" for c in r["stage_cpu_ms_per_step"])
            + f"; {r.get('other_cpu_cores', float('nan')):.2f}"
            + f"; idle {r.get('idle_share', float('nan')):.0%}"
            + ("" if r["target_met"] else "  <- below 0.9")
        )
        if "compute_vs_matmuls" in r:
            lines.append(
                "      matmuls at the one-thread rate ("
                + " | ".join(f"{g:.0f}" for g in r["sgemm_gflops"])
                + " GFLOP/s): F/B ms per mb "
                + " | ".join(
                    f"{f:.2f}/{b:.2f}"
                    for f, b in zip(r["matmul_fwd_ms"], r["matmul_bwd_ms"], strict=True)
                )
                + "; stage compute / its matmuls "
                + " | ".join(f"{c:.2f}" for c in r["compute_vs_matmuls"])
                + (
                    " (wall), "
                    + " | ".join(f"{c:.2f}" for c in r["compute_cpu_vs_matmuls"])
                    + " (CPU time)"
                    if "compute_cpu_vs_matmuls" in r
                    else ""
                )
                + (
                    "; with operands out of cache ("
                    + " | ".join(f"{g:.0f}" for g in r["sgemm_cold_gflops"])
                    + " GFLOP/s) "
                    + " | ".join(f"{c:.2f}" for c in r["compute_vs_cold_matmuls"])
                    if "compute_vs_cold_matmuls" in r
                    else ""
                )
            )
    for r in res.get("torch", []):
        lines.append(
            f"  torch.distributed.pipelining {r['torch']} (2 processes, gloo, static shapes, "
            f"fused Adam), {r['schedule']} "
            f"M={r['microbatches']}: {r['samples_per_s']:.0f} samples/s "
            f"({r['step_s_median'] * 1e3:.1f} ms/step)"
            + _memory_pair(r, res["pipeline"])
            + "".join(f"; {p}" for p in r.get("exit_problems", []))
        )
    if "torch" not in res:
        why = res.get("torch_skipped", "torch is not installed")
        lines.append(f"  torch.distributed.pipelining: not measured ({why})")
    pr = res["projection"]
    lines.append(
        "(d) projection, a core per stage (simulator fed per-layer times measured on one core "
        f"and the shm hop {pr['hop_ms']:.3f} ms; 1F1B, M={pr['microbatches']}; one BLAS "
        "thread a stage):"
    )
    for r in pr["rows"]:
        lines.append(
            f"  K={r['stages']} split {r['split']}: {r['samples_per_s']:.0f} samples/s "
            f"({r['step_s'] * 1e3:.1f} ms/step, bubble {r['bubble']:.0%})"
        )
    lines += format_rounds(res.get("rounds", []))
    met = sum(res["targets"]["throughput_within_10pct_of_simulator"].values())
    total = len(res["targets"]["throughput_within_10pct_of_simulator"])
    lines.append(
        f"throughput within 10% of the simulator: {met}/{total} configurations; "
        f"shm hop under {t['target_ms']:g} ms: {'yes' if t['target_met'] else 'no'}"
    )
    vs = res["targets"].get("default_at_least_torch")
    if vs:
        lines.append(
            f"default transport at least torch's samples/s (K=2): {sum(vs.values())}/{len(vs)} "
            "configurations"
        )
    return "\n".join(lines)


def _sched(r: dict[str, Any]) -> str:
    """A row's schedule, with its chunks a device where it has virtual stages."""
    v = r.get("chunks", 1)
    return r["schedule"] + (f" (v={v})" if v > 1 else "")


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _memory_pair(t: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Each rank's resident peak over its baseline (the OS's), torch's beside graphpart's for
    the same schedule and M on the default transport (the last row of it measured)."""
    ours = [
        r for r in rows
        if (r["schedule"], r["microbatches"], r["stages"]) == (t["schedule"], t["microbatches"], 2)
        and "resident_growth" in r
    ]  # fmt: skip
    return _growths(t.get("resident_growth"), ours[-1]["resident_growth"] if ours else None)


def _growths(torch: list[int] | None, ours: list[int] | None) -> str:
    if not torch or not ours:
        return ""
    mib = 2.0**20
    return (
        "; peak resident growth a device: torch "
        + " | ".join(f"{v / mib:.1f}" for v in torch)
        + " MiB, graphpart "
        + " | ".join(f"{v / mib:.1f}" for v in ours)
        + " MiB"
    )
