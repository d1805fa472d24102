"""(e) Schedules in turns on the same workers: each one's bubble over the first's, by rounds.

Why rounds: a bubble ratio between two schedules measured minutes apart is mostly the
machine's drift (this one's identical actions vary by up to 2x from one minute to the next:
a ZB-H1 / 1F1B ratio of fresh engines ran 0.30-0.81 over eleven pairs). Here one engine per M
runs every schedule in turn, a few steps each, for `rounds` rounds, the order rotated each
round (A B, B A, ...), so each round's ratio compares steps seconds apart on the same
processes; the median round is the figure, beside every round's.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from graphpart.engines import Engine
from graphpart.errors import ConfigError
from graphpart.plan import schedule as sch
from graphpart.plan.partition import partition
from graphpart.tools.bench_pipeline.throughput import _problem, _time_steps, simulated

HALF = 0.5  # the zero-bubble paper's ZB-H1 at a third of 1F1B's bubble; the target: at most half


def round_kinds(schedules: Sequence[str]) -> list[str]:
    """The schedules rounds take in turns (those of one stage a worker), two or more; else a
    ConfigError naming them."""
    kinds = [k for k in schedules if k in sch.KINDS]
    if len(kinds) < 2:
        raise ConfigError(
            f"--rounds compares two schedules or more on the same workers; --schedules "
            f"{','.join(schedules)} has {len(kinds)} of one stage a worker "
            f"({', '.join(sch.KINDS)}): add one, e.g. --schedules 1f1b,zb-h1"
        )
    return kinds


def measure_rounds(
    sizes: Sequence[int],
    batch: int,
    dtype: str,
    microbatches: Sequence[int],
    schedules: Sequence[str],
    rounds: int,
    warmup: int,
    steps: int,
    comm_s: float,
    transport: str = "shm",
    stages: int = 2,
) -> list[dict[str, Any]]:
    """Per M, `rounds` rounds of every schedule in `schedules` (two or more, none virtual)
    on one K-stage engine, `warmup` untimed and `steps` timed steps each: each schedule's
    measured and simulated bubble a round, and each round's ratio of every schedule's
    measured (and simulated) bubble to the first schedule's."""
    kinds = round_kinds(schedules)
    g, params, X, y, opt = _problem(sizes, batch, dtype)
    plan = partition(g, stages, "balanced")
    out = []
    for m in microbatches:
        per_round: list[dict[str, dict[str, Any]]] = []
        with Engine(
            plan, params, opt, transport=transport, max_rows=batch, keep_events=False,
            schedule=kinds[0], microbatches=m,
        ) as eng:  # fmt: skip
            for r in range(rounds):
                got = {}
                for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                    eng.reschedule(kind, m)
                    timed = _time_steps(eng, X, y, warmup, steps)
                    got[kind] = {
                        "step_ms": timed["step_s_median"] * 1e3,
                        **simulated(timed, kind, m, stages, comm_s),
                    }
                per_round.append(got)
        out.append(summarise(m, kinds, per_round, stages, plan.sizes()))
    return out


def summarise(
    m: int,
    kinds: Sequence[str],
    per_round: Sequence[dict[str, dict[str, Any]]],
    stages: int,
    split: Sequence[int],
) -> dict[str, Any]:
    """One M's rounds: each schedule's median bubble (measured, simulated) and their worst
    gap, and each other schedule's ratio to the first's, round by round and its median."""
    base = kinds[0]
    row: dict[str, Any] = {
        "microbatches": m,
        "stages": stages,
        "stage_split": list(split),
        "rounds": len(per_round),
        "baseline": base,
        "schedules": {},
    }
    for kind in kinds:
        got = [r[kind] for r in per_round]
        meas = [g["measured_bubble"] for g in got]
        pred = [g["predicted_bubble"] for g in got]
        s: dict[str, Any] = {
            "measured_bubble": meas,
            "predicted_bubble": pred,
            "measured_median": statistics.median(meas),
            "predicted_median": statistics.median(pred),
            "worst_gap_points": max(abs(a - b) for a, b in zip(meas, pred, strict=True)) * 100,
            "step_ms_median": statistics.median(g["step_ms"] for g in got),
            "fwd_ms": _medians(got, "fwd_ms"),
        }
        if all("igrad_ms" in g for g in got):
            s["igrad_ms"] = _medians(got, "igrad_ms")
            s["wgrad_ms"] = _medians(got, "wgrad_ms")
            times = [*s["fwd_ms"], *s["igrad_ms"], *s["wgrad_ms"]]
            s["fiw_spread"] = max(times) / min(times) - 1.0  # the slowest over the fastest
        if kind != base:
            ratios = [_over(r[kind], r[base], "measured_bubble") for r in per_round]
            sims = [_over(r[kind], r[base], "predicted_bubble") for r in per_round]
            s["ratio"] = ratios
            s["ratio_median"] = statistics.median(ratios)
            s["predicted_ratio"] = sims
            s["predicted_ratio_median"] = statistics.median(sims)
            s["rounds_at_most_half"] = sum(x <= HALF for x in ratios)
        row["schedules"][kind] = s
    return row


def _over(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    """a's figure over b's; NaN where b's is 0 (a baseline with no bubble has no ratio)."""
    return a[key] / b[key] if b[key] > 0 else float("nan")


def _medians(got: Sequence[dict[str, Any]], key: str) -> list[float]:
    """Per stage, the median over the rounds of a per-stage figure."""
    return [statistics.median(g[key][k] for g in got) for k in range(len(got[0][key]))]


def format_rounds(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report's lines for measure_rounds's rows."""
    if not rows:
        return []
    r0 = rows[0]
    lines = [
        f"(e) schedules in turns on the same workers (K={r0['stages']}, split "
        f"{r0['stage_split']}), {r0['rounds']} rounds an M, the order rotated each round; "
        "bubble: measured / simulated, medians; ratio: each round's bubble over "
        f"{r0['baseline']}'s in the same round"
    ]
    for r in rows:
        for kind, s in r["schedules"].items():
            fiw = (
                "; F/I/W ms per mb "
                + " | ".join(
                    f"{f:.2f}/{i:.2f}/{w:.2f}"
                    for f, i, w in zip(s["fwd_ms"], s["igrad_ms"], s["wgrad_ms"], strict=True)
                )
                + f" (spread {s['fiw_spread']:.0%})"
                if "fiw_spread" in s
                else ""
            )
            ratio = (
                f"; ratio median {s['ratio_median']:.3f} "
                f"(simulated {s['predicted_ratio_median']:.3f}), "
                f"rounds {' '.join(f'{x:.2f}' for x in s['ratio'])}, at most 1/2 in "
                f"{s['rounds_at_most_half']}/{r['rounds']}"
                if "ratio" in s
                else ""
            )
            lines.append(
                f"  M={r['microbatches']} {kind:8} step {s['step_ms_median']:.1f} ms, bubble "
                f"{s['measured_median']:.1%} / {s['predicted_median']:.1%} (worst gap "
                f"{s['worst_gap_points']:.1f} points){ratio}{fiw}"
            )
    return lines
