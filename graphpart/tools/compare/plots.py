"""The comparison's PNGs: memory per device by category, loss curves, throughput, one step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graphpart.plan.memory import CATEGORIES
from graphpart.tools.compare.results import Comparison, memory_unit
from graphpart.tools.compare.runner import Outcome
from graphpart.tools.compare.verdict import setup_name

SAME = 1e-3  # curves closer than this (relative) at every epoch coincide on the plot
MARKERS = "osD^v<>ph*"


def _plt() -> Any:
    import matplotlib  # loaded only when a report is written (it takes a while to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _name(o: Outcome) -> str:
    """A strategy as the plots name it: its name, never its letter alone."""
    if o.strategy.key == "auto":  # short, as the verdict names it: "1F1B, K=3, M=4 (plan --auto)"
        return setup_name({"config": o.strategy.overrides, "key": "auto"})
    return o.strategy.name


def same_as(outcomes: list[Outcome]) -> dict[str, str]:
    """key -> the name of the earlier strategy whose per-epoch curves (train loss, test loss,
    test accuracy) it matches within SAME at every epoch: their lines coincide on a plot."""
    out: dict[str, str] = {}
    for i, o in enumerate(outcomes):
        for p in outcomes[:i]:
            if p.strategy.key not in out and _close(o.epochs, p.epochs):
                out[o.strategy.key] = _name(p)
                break
    return out


def _close(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    if not a or len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        for k in ("train_loss", "test_loss", "test_accuracy"):
            u, v = x.get(k), y.get(k)
            if (u is None) != (v is None):
                return False
            if u is not None and abs(u - v) > SAME * max(abs(u), abs(v), 1e-12):
                return False
    return True


def memory_png(c: Comparison, path: Path) -> None:
    """Stacked bars, one per device of each strategy: the ledger's bytes by category (the
    workers' own accounting; the prediction, hatched, for a strategy that did not run); a
    black bar for the predicted peak, a dot for what the OS measured (resident growth); the
    budget as a line. The axis unit is the table's."""
    plt = _plt()
    unit, size = memory_unit(c)
    bars, labels, preds, os_, skipped = [], [], [], [], []
    for o in c.outcomes:
        per = o.ledger or o.predicted
        for k, d in enumerate(per):
            bars.append(d)
            labels.append(f"{_name(o)} #{k}" if len(per) > 1 else _name(o))
            preds.append(o.predicted[k]["total"] if k < len(o.predicted) else None)
            os_.append(o.resident[k] if k < len(o.resident) else None)
            skipped.append(not o.ledger)
    fig, ax = plt.subplots(figsize=(max(7, 0.55 * len(bars) + 2.5), 4.8))
    bottom = [0.0] * len(bars)
    for cat in CATEGORIES:
        h = [d.get(cat, 0) / size for d in bars]
        cont = ax.bar(range(len(bars)), h, bottom=bottom, label=cat)
        for patch, skip in zip(cont.patches, skipped, strict=True):
            if skip:
                patch.set(alpha=0.35, hatch="//")
        bottom = [b + x for b, x in zip(bottom, h, strict=True)]
    if any(skipped):
        ax.bar([0], [0], color="white", edgecolor="grey", hatch="//",
               label="did not run (predicted)")  # fmt: skip
    ticks = [(i, p / size) for i, p in enumerate(preds) if p is not None]
    for n, (i, v) in enumerate(ticks):
        ax.plot([i - 0.5, i + 0.5], [v, v], color="black", lw=2.2, zorder=4,
                label="predicted peak" if n == 0 else None)  # fmt: skip
    seen = [(i, v / size) for i, v in enumerate(os_) if v is not None]
    if seen:
        ax.scatter(*zip(*seen, strict=True), color="red", edgecolor="black", marker="o", s=22,
                   zorder=5, label="measured peak (OS: resident growth)")  # fmt: skip
    if c.budget is not None:
        ax.axhline(c.budget / size, color="red", ls="--", label="budget")
    ax.set_xticks(range(len(bars)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"{unit} per device")
    ax.set_title("peak memory per device (#k: device k); bars: the workers' ledger by category")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_png(c: Comparison, path: Path) -> None:
    """Test loss (and accuracy) against training seconds and against epochs; a legend on every
    panel, and a strategy whose curves coincide with an earlier one's says so."""
    plt = _plt()
    acc = c.metric == "test_accuracy"
    ran = [o for o in c.ran() if o.epochs]
    same = same_as(ran)
    fig, axes = plt.subplots(1, 3 if acc else 2, figsize=(15 if acc else 10.5, 4.4))
    for i, o in enumerate(ran):
        t = [r["train_s"] for r in o.epochs]
        e = [r["epoch"] for r in o.epochs]
        loss = [r["test_loss"] for r in o.epochs]
        note = f" (same as {same[o.strategy.key]})" if o.strategy.key in same else ""
        style = {"marker": MARKERS[i % len(MARKERS)], "markersize": 4, "lw": 1.2}
        # coinciding lines: dashed, so the one drawn over still shows
        dashed = {"ls": "--"} if note else {}
        axes[0].plot(t, loss, label=_name(o), **style)
        axes[1].plot(e, loss, label=_name(o) + note, **style, **dashed)
        if acc:
            axes[2].plot(e, [r["test_accuracy"] for r in o.epochs], label=_name(o) + note,
                         **style, **dashed)  # fmt: skip
    axes[0].set(xlabel="training seconds (measured)", ylabel="test loss", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="test loss", yscale="log")
    if acc:
        axes[2].set(xlabel="epoch", ylabel="test accuracy")
        if c.target is not None:
            axes[2].axhline(c.target, color="grey", ls=":", label="target")
    for ax in axes:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput_png(c: Comparison, path: Path) -> None:
    """Samples/s measured on this machine beside, for multi-device strategies, the projection
    with a device each (one-device strategies have nothing to project)."""
    plt = _plt()
    rows = [(o, c.row(o)) for o in c.ran()]
    rows = [(o, r) for o, r in rows if r.get("samples_per_s")]
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(rows) + 2.5), 4.4))
    first = True
    for i, (o, r) in enumerate(rows):
        multi = o.strategy.devices > 1 and r["projected_samples_per_s"]
        dx, w = (-0.2, 0.4) if multi else (0.0, 0.6)
        ax.bar(i + dx, r["samples_per_s"], w, color="tab:blue",
               label="measured (wall clock, this machine)" if i == 0 else None)  # fmt: skip
        ax.text(i + dx, r["samples_per_s"], f"{r['samples_per_s']:,.0f}", ha="center",
                va="bottom", fontsize=6)  # fmt: skip
        if multi:
            p = r["projected_samples_per_s"]
            ax.bar(i + 0.2, p, 0.4, color="tab:orange", hatch="//",
                   label="projected (simulated: a device each)" if first else None)  # fmt: skip
            ax.text(i + 0.2, p, f"{p:,.0f}", ha="center", va="bottom", fontsize=6)
            first = False
    ax.set_xticks(range(len(rows)), [_name(o) for o, _ in rows], rotation=25, ha="right",
                  fontsize=8)  # fmt: skip
    ax.set_ylabel("samples/s")
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


AXIS_PT = 6.8 * 72  # about the width of a schedule panel's axis, in points (9-inch figure)
FONT = 6


def schedule_png(c: Comparison, path: Path) -> bool:
    """One simulated step of each pipeline (measured stage times) as a Gantt chart. A box is
    at least MIN_BOX of the step wide, so short stages show; a label is drawn only where it
    fits in its box."""
    plt = _plt()
    from matplotlib.patches import Patch

    names = {o.strategy.key: _name(o) for o in c.outcomes}
    tls = [(k, p.timeline) for k, p in c.projections.items() if p and p.timeline]
    if not tls:
        return False
    fig, axes = plt.subplots(len(tls), 1, figsize=(9, 1.5 + 1.3 * len(tls)), squeeze=False)
    for ax, (key, tl) in zip(axes[:, 0], tls, strict=True):
        span = tl.makespan * 1e3 or 1.0
        for ev in tl.events:
            color = "tab:blue" if ev.action.kind == "F" else "tab:orange"
            width = max((ev.end - ev.start) * 1e3, MIN_BOX * span)
            ax.broken_barh([(ev.start * 1e3, width)], (ev.stage - 0.4, 0.8), color=color,
                           edgecolor="white", linewidth=0.4)  # fmt: skip
            label = str(ev.action)
            if width / span * AXIS_PT >= 0.65 * FONT * len(label) + 2:
                ax.text(ev.start * 1e3 + width / 2, ev.stage, label, ha="center",
                        va="center", fontsize=FONT)  # fmt: skip
        ax.set_yticks(range(len(tl.busy)), [f"stage {k}" for k in range(len(tl.busy))])
        ax.invert_yaxis()
        ax.set_title(f"{names.get(key, key)}: one simulated step, bubble {tl.bubble:.0%}",
                     fontsize=9)  # fmt: skip
        ax.set_xlabel("ms")
        ax.legend(handles=[Patch(color="tab:blue", label="forward F<m>"),
                           Patch(color="tab:orange", label="backward B<m>")],
                  fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


MIN_BOX = 0.004  # of the step: the narrowest box drawn
