"""The comparison as a terminal table, and as a report folder (report.md, PNGs, JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from graphpart.plan.auto import table as auto_table
from graphpart.tools.compare import plots
from graphpart.tools.compare.results import (
    Comparison,
    byte_unit,
    in_unit,
    memory_unit,
    state_bytes,
)
from graphpart.tools.compare.verdict import Verdict
from graphpart.units import human_bytes, table


def _f(v: Any, spec: str = ",.0f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def strategy_table(c: Comparison) -> str:
    """One row per strategy; every memory column in one unit picked from the data (the unit
    of memory.png's axis too), named in the header."""
    mu = memory_unit(c)
    rows_ = {o.strategy.key: c.row(o) for o in c.outcomes}
    cu = byte_unit([r.get("comm_bytes_per_step") for r in rows_.values()])
    headers = [
        "strategy",
        "devices",
        f"peak/device {mu[0]} meas. (OS)",
        "pred.",
        f"state/device {mu[0]}",
        f"activ./device {mu[0]}",
        "step ms",
        "samples/s",
        "projected",
        f"comm/step {cu[0]}",
        "bubble",
        c.metric.replace("test_", "test "),
        "to target s",
    ]
    rows, notes = [], []
    for o in c.outcomes:
        r = rows_[o.strategy.key]
        if not r.get("steps"):
            pred = in_unit(r["predicted_peak"], mu) if r["predicted_peak"] else "-"
            rows.append(
                [o.strategy.label, o.strategy.devices, o.status, pred] + ["-"] * (len(headers) - 4)
            )
            if o.problem:
                notes.append(f"{o.strategy.key}: {o.problem}")
            continue
        worst = max(o.ledger, key=lambda d: d["total"])
        rows.append(
            [
                o.strategy.label,
                o.strategy.devices,
                in_unit(r["measured_peak"], mu),
                in_unit(r["predicted_peak"], mu),
                in_unit(state_bytes(worst), mu),
                in_unit(worst["activation"], mu),
                f"{r['step_s'] * 1e3:.2f}",
                _f(r["samples_per_s"]),
                _f(r["projected_samples_per_s"]),
                in_unit(r["comm_bytes_per_step"], cu),
                _f(r["bubble"], ".0%"),
                _f(r["final_" + c.metric], ".4f"),
                _f(r["time_to_target_s"], ".2f"),
            ]
        )
    return table(headers, rows) + "".join(f"\n  {n}" for n in notes)


def header(c: Comparison) -> str:
    cfg = c.base
    m, t = cfg.model, cfg.train
    budget = human_bytes(c.budget) if c.budget is not None else "none"
    return (
        f"model {cfg.data.source} {list(m.hidden)} {m.activation}, batch {t.batch_size}, "
        f"{t.epochs} epochs, {t.optimizer} lr {t.lr:g}, {t.dtype}, seed {t.seed}; "
        f"K={c.devices} devices ({c.threads} core(s) each), M={c.microbatches} pipeline "
        f"micro-batches, lr rule for b: {c.lr_rule}; memory budget {budget}; target "
        f"{c.metric.replace('_', ' ')} {_f(c.target, 'g')}"
    )


def terminal(c: Comparison, conclusion: list[str], answer: Verdict) -> str:
    """What compare prints: the verdict first (its headline is the first line), then the
    setup, the table and the detailed conclusion."""
    parts = [answer.headline + "".join(f"\n  {f}" for f in answer.figures), header(c)]
    parts.append(strategy_table(c))
    if c.auto:
        parts.append("plan --auto's best setups (predicted):\n" + auto_table(c.auto, 5))
    parts.append("\n".join(f"- {line}" for line in conclusion))
    if c.interrupted:
        parts.append("interrupted: the strategies above without figures did not run")
    return "\n\n".join(parts)


def write_report(c: Comparison, conclusion: list[str], out: Path, answer: Verdict) -> Path:
    """report.md (its first paragraph the verdict) with its PNGs and compare.json in `out`
    (created); returns report.md."""
    out.mkdir(parents=True, exist_ok=True)
    data = {"verdict": asdict(answer), **c.to_dict()}
    (out / "compare.json").write_text(json.dumps(data, indent=2) + "\n")
    pngs = []
    if c.outcomes:
        plots.memory_png(c, out / "memory.png")
        pngs.append(("Peak memory per device, by category", "memory.png"))
    if c.ran():
        plots.curves_png(c, out / "curves.png")
        plots.throughput_png(c, out / "throughput.png")
        pngs += [
            ("Test loss against training time and epochs", "curves.png"),
            ("Throughput: measured here, and projected with a device each", "throughput.png"),
        ]
    if plots.schedule_png(c, out / "schedule.png"):
        pngs.append(("One step of each pipeline (simulated from measured times)", "schedule.png"))
    lines = [
        "# graphpart compare",
        "",
        f"**{answer.headline}**"
        + (f" Figures: {'; '.join(answer.figures)}." if answer.figures else ""),
        "",
        header(c),
        "",
        "## Conclusion",
        "",
        *(f"- {x}" for x in conclusion),
        "",
        "## Figures",
        "",
        "```",
        strategy_table(c),
        "```",
        "",
        "Measured: on this machine, every device a share of its cores: peak memory as the "
        "OS counts it (each worker process's resident growth over its own baseline), "
        "samples/s by the wall clock over training steps only. Predicted: the memory model's "
        "peak, which a budget is checked against (state and activations per device are the "
        "workers' ledger, which equals it by construction). Projected: one device per stage "
        "or replica, from the schedule simulator fed the stages' measured compute times and a "
        f"measured boundary hop ({c.hop_s * 1e3:.3f} ms); one-device strategies are measured.",
        "",
    ]
    for o in c.outcomes:
        lines.append(
            f"- **{o.strategy.label}**: {o.strategy.title}"
            + (f" — {o.status}: {o.problem}" if o.problem else "")
        )
    lines.append("")
    for title, name in pngs:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    if c.auto:
        lines += ["## plan --auto", "", "```", auto_table(c.auto, 10), "```", ""]
    if c.interrupted:
        lines += ["Interrupted (Ctrl-C): strategies without figures did not run.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
