"""The comparison as a terminal table, and as a report folder (report.md, PNGs, JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graphpart.plan.auto import table as auto_table
from graphpart.tools.compare import plots
from graphpart.tools.compare.results import Comparison, state_bytes
from graphpart.units import human_bytes, table


def _f(v: Any, spec: str = ",.0f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def strategy_table(c: Comparison) -> str:
    headers = [
        "strategy",
        "devices",
        "peak/device meas. (OS)",
        "pred.",
        "state/device",
        "activ./device",
        "step ms",
        "samples/s",
        "projected",
        "comm/step",
        "bubble",
        c.metric.replace("test_", "test "),
        "to target s",
    ]
    rows, notes = [], []
    for o in c.outcomes:
        r = c.row(o)
        if not r.get("steps"):
            pred = human_bytes(r["predicted_peak"]) if r["predicted_peak"] else "-"
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
                human_bytes(r["measured_peak"]),
                human_bytes(r["predicted_peak"]),
                human_bytes(state_bytes(worst)),
                human_bytes(worst["activation"]),
                f"{r['step_s'] * 1e3:.2f}",
                _f(r["samples_per_s"]),
                _f(r["projected_samples_per_s"]),
                human_bytes(r["comm_bytes_per_step"]),
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


def terminal(c: Comparison, conclusion: list[str]) -> str:
    parts = [header(c), strategy_table(c)]
    if c.auto:
        parts.append("plan --auto's best setups (predicted):\n" + auto_table(c.auto, 5))
    parts.append("\n".join(f"- {line}" for line in conclusion))
    if c.interrupted:
        parts.append("interrupted: the strategies above without figures did not run")
    return "\n\n".join(parts)


def write_report(c: Comparison, conclusion: list[str], out: Path) -> Path:
    """report.md with its PNGs and compare.json in `out` (created); returns report.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(c.to_dict(), indent=2) + "\n")
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
        "Measured: on this machine, every device a share of its cores (peak memory is the "
        "workers' ledger; samples/s is training steps only). Projected: one device per stage or "
        "replica, from the schedule simulator fed the stages' measured compute times and a "
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
