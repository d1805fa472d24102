"""metrics.jsonl: one JSON row per line, each with a `kind`: "step", "epoch" or "resume".

Every row has kind, step (the optimizer steps done so far), epoch (1-based) and time (seconds
since 1970). A step row adds loss (the objective J of that step's minibatch), L (its data loss)
and s (its regulariser); an epoch row adds train_loss (the epoch's mean J), test_loss, test_accuracy
(classification only) and epoch_s. A resume row marks where `--resume` went on (its step and
epoch are the checkpoint's) and what it changed: `changed` maps each dotted config key to
[old, new]. Rows written before the `kind` field existed read as epoch
rows when they have a train_loss, step rows otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KINDS = ("step", "epoch", "resume")


def step_row(step: int, epoch: int, loss: float, L: float, s: float) -> dict[str, Any]:
    """The row of a logged step."""
    return {
        "kind": "step",
        "step": step,
        "epoch": epoch,
        "time": time.time(),
        "loss": loss,
        "L": L,
        "s": s,
    }


def epoch_row(step: int, epoch: int, figures: Mapping[str, Any]) -> dict[str, Any]:
    """The row of a finished epoch: `figures` are train_loss, test_loss, ... (in that order)."""
    return {"kind": "epoch", "step": step, "epoch": epoch, "time": time.time(), **figures}


def resume_row(step: int, epoch: int, changed: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
    """The row of a resume: from the checkpoint at `step` (end of `epoch`), what changed."""
    return {
        "kind": "resume",
        "step": step,
        "epoch": epoch,
        "time": time.time(),
        "changed": {k: [a, b] for k, (a, b) in changed.items()},
    }


def kind_of(row: Mapping[str, Any]) -> str:
    """A row's kind (older rows, without the field, by their keys)."""
    kind = row.get("kind")
    if kind in KINDS:
        return str(kind)
    return "epoch" if "train_loss" in row else "step"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl, each with its kind (a line cut by a crash is skipped; no
    file is no rows)."""
    rows = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append({**row, "kind": kind_of(row)})
    return rows


def of_kind(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The rows of one kind, in file order."""
    return [r for r in rows if kind_of(r) == kind]
