"""PNG plots of a stage's memory over time, stacked by category, with its F/B spans (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphpart.plan.memory import CATEGORIES
from graphpart.tools.profile.trace import spans

COLORS = {
    "parameter": "#4c72b0",
    "gradient": "#dd8452",
    "optimizer": "#55a868",
    "activation": "#c44e52",
    "boundary": "#8172b3",
    "workspace": "#937860",
}


def _split_first_step(events: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Events of the first step (allocations happen there) and of the later steps."""
    cut = next((i + 1 for i, e in enumerate(events) if e[1] == "step"), len(events))
    parts = [list(events[:cut]), list(events[cut:])]
    return [p for p in parts if p]


def _draw_memory(ax: Any, gantt: Any, events: Sequence[Sequence[Any]], slot_bytes: int) -> None:
    t = np.array([e[0] for e in events]) * 1e3
    by = np.array([e[3] for e in events], dtype=float) / 2**20
    t = np.append(t, t[-1])
    by = np.vstack([by, by[-1]])
    lower = np.zeros(len(t))
    for i, c in enumerate(CATEGORIES):
        upper = lower + by[:, i]
        ax.fill_between(t, lower, upper, step="post", color=COLORS[c], label=c, lw=0)
        lower = upper
    if slot_bytes:  # how much of the activation band holds a micro-batch right now
        act = CATEGORIES.index("activation")
        live, xs, ys = 0, [], []
        for e in events:
            if e[1] in ("F", "B_end", "W_end") and e[2] != "-1":
                live += 1 if e[1] == "F" else -1
                xs.append(e[0] * 1e3)
                ys.append((sum(e[3][:act]) + live * slot_bytes) / 2**20)
        if xs:
            xs.append(t[-1])
            ys.append(ys[-1])
            ax.step(
                xs,
                ys,
                where="post",
                color="black",
                lw=1,
                ls="--",
                label="top of activations in use",
            )
    for e in events:
        if e[1] == "step":
            ax.axvline(e[0] * 1e3, color="grey", lw=0.8, ls=":")
    sp = spans(events)
    width = max(t[-1] - t[0], 1e-9)
    for s in sp:
        y = 1 if s["kind"] == "F" else 0
        color = "#4c72b0" if s["kind"] == "F" else "#c44e52"
        start, dur = s["start"] * 1e3, (s["end"] - s["start"]) * 1e3
        gantt.broken_barh([(start, dur)], (y, 0.8), color=color)
        if dur > 0.02 * width:
            gantt.text(
                start + dur / 2,
                y + 0.4,
                str(s["mb"]),
                ha="center",
                va="center",
                fontsize=6,
                color="white",
            )
    gantt.set_yticks([0.4, 1.4], ["B", "F"])
    gantt.set_ylim(0, 2)


def plot_stage(
    events: Sequence[Sequence[Any]],
    k: int,
    path: str | Path,
    slot_bytes: int = 0,
    name: str | None = None,
) -> None:
    """PNG of stage k's memory over time, stacked by category, with F/B spans underneath
    (`name`: the worker's, e.g. "replica 0, stage 1"; default "stage k").

    Two panels side by side when there are several steps: the first step (where the buffers
    are allocated, and where a fresh process also compiles its kernels) and the later ones.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = _split_first_step(events) or [[]]
    fig, axes = plt.subplots(
        2,
        len(parts),
        figsize=(11, 5.5),
        squeeze=False,
        sharey="row",
        gridspec_kw={"height_ratios": [4, 1], "width_ratios": [1, 2][: len(parts)]},
    )
    for col, part in enumerate(parts):
        ax, gantt = axes[0][col], axes[1][col]
        if part:
            _draw_memory(ax, gantt, part, slot_bytes)
        gantt.set_xlabel("ms since the stage's ledger was created")
        ax.set_title(
            "first step (allocations)"
            if col == 0 and len(parts) > 1
            else "later steps"
            if col
            else ""
        )
        gantt.sharex(ax)
    axes[0][0].set_ylabel("MiB held (ledger)")
    axes[0][0].legend(loc="upper left", fontsize=7, ncol=2)
    fig.suptitle(
        f"{name or f'stage {k}'}: memory over time by category, forward (F) and backward (B) "
        "of each micro-batch"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
