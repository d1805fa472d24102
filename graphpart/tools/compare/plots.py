"""The comparison's PNGs: memory per device by category, loss curves, throughput, one step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graphpart.plan.memory import CATEGORIES
from graphpart.tools.compare.results import Comparison

MiB = 2**20


def _plt() -> Any:
    import matplotlib  # loaded only when a report is written (it takes a while to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def memory_png(c: Comparison, path: Path) -> None:
    """Stacked bars, one per device of each strategy: the ledger's bytes by category (the
    workers' own accounting); a tick for the prediction, a dot for what the OS measured
    (resident growth); the budget as a line."""
    plt = _plt()
    bars, labels, preds, os_ = [], [], [], []
    for o in c.outcomes:
        per = o.ledger or o.predicted
        for k, d in enumerate(per):
            bars.append(d)
            labels.append(f"{o.strategy.key}{k}" if len(per) > 1 else o.strategy.key)
            preds.append(o.predicted[k]["total"] if k < len(o.predicted) else None)
            os_.append(o.resident[k] if k < len(o.resident) else None)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(bars) + 2), 4))
    bottom = [0.0] * len(bars)
    for cat in CATEGORIES:
        h = [d.get(cat, 0) / MiB for d in bars]
        ax.bar(range(len(bars)), h, bottom=bottom, label=cat)
        bottom = [b + x for b, x in zip(bottom, h, strict=True)]
    for i, p in enumerate(preds):
        if p is not None:
            ax.plot([i - 0.4, i + 0.4], [p / MiB] * 2, color="black", lw=1)
    seen = [(i, v / MiB) for i, v in enumerate(os_) if v is not None]
    if seen:
        ax.scatter(*zip(*seen, strict=True), color="black", marker="o", s=14, zorder=3,
                   label="measured (OS: resident growth)")  # fmt: skip
    if c.budget is not None:
        ax.axhline(c.budget / MiB, color="red", ls="--", label="budget")
    ax.set_xticks(range(len(bars)), labels)
    ax.set_ylabel("MiB (bars: ledger; ticks: predicted; dots: OS)")
    ax.set_title("peak memory per device (strategy + device index)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_png(c: Comparison, path: Path) -> None:
    """Test loss (and accuracy) against training seconds and against epochs."""
    plt = _plt()
    acc = c.metric == "test_accuracy"
    fig, axes = plt.subplots(1, 3 if acc else 2, figsize=(13 if acc else 9, 3.6))
    for o in c.ran():
        if not o.epochs:
            continue
        t = [r["train_s"] for r in o.epochs]
        e = [r["epoch"] for r in o.epochs]
        loss = [r["test_loss"] for r in o.epochs]
        axes[0].plot(t, loss, label=o.strategy.label)
        axes[1].plot(e, loss, label=o.strategy.label)
        if acc:
            axes[2].plot(e, [r["test_accuracy"] for r in o.epochs], label=o.strategy.label)
    axes[0].set(xlabel="training seconds", ylabel="test loss", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="test loss", yscale="log")
    if acc:
        axes[2].set(xlabel="epoch", ylabel="test accuracy")
        if c.target is not None:
            axes[2].axhline(c.target, color="grey", ls=":", label="target")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput_png(c: Comparison, path: Path) -> None:
    """Samples/s measured on this machine beside the projection with a device each."""
    plt = _plt()
    rows = [c.row(o) for o in c.ran()]
    rows = [r for r in rows if r.get("samples_per_s")]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows) + 2), 3.6))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["samples_per_s"] for r in rows], 0.4, label="measured")
    ax.bar(
        [i + 0.2 for i in x],
        [r["projected_samples_per_s"] or 0 for r in rows],
        0.4,
        label="projected (a device each)",
    )
    ax.set_xticks(list(x), [r["key"] for r in rows])
    ax.set_ylabel("samples/s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def schedule_png(c: Comparison, path: Path) -> bool:
    """One simulated step of each pipeline (measured stage times) as a Gantt chart."""
    plt = _plt()
    tls = [(k, p.timeline) for k, p in c.projections.items() if p and p.timeline]
    if not tls:
        return False
    fig, axes = plt.subplots(len(tls), 1, figsize=(9, 1.4 + 1.1 * len(tls)), squeeze=False)
    for ax, (key, tl) in zip(axes[:, 0], tls, strict=True):
        for ev in tl.events:
            color = "tab:blue" if ev.action.kind == "F" else "tab:orange"
            ax.broken_barh(
                [(ev.start * 1e3, (ev.end - ev.start) * 1e3)], (ev.stage - 0.4, 0.8), color=color
            )
            ax.text(
                (ev.start + ev.end) / 2 * 1e3,
                ev.stage,
                str(ev.action),
                ha="center",
                va="center",
                fontsize=6,
            )
        ax.set_yticks(range(len(tl.busy)), [f"stage {k}" for k in range(len(tl.busy))])
        ax.invert_yaxis()
        ax.set_title(f"{key}: one step, bubble {tl.bubble:.0%} (blue F, orange B)", fontsize=9)
        ax.set_xlabel("ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
