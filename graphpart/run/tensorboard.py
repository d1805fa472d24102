"""A run's metrics as TensorBoard event files in RUN_DIR/tensorboard/ (written by tensorboardX).

The event files mirror metrics.jsonl: each step row gives `loss/step` (that step's objective J)
and each epoch row `loss/train` (the epoch's mean J), `loss/test` and, for classification,
`accuracy/test`, all at the row's step as global_step and its time as wall time. The log is
opened from the rows metrics.jsonl already has: old event files are removed and those rows are
written again to a fresh file, so a resumed run (whose metrics.jsonl was cut back to its
checkpoint's step) shows no step twice, and a run that turns train.tensorboard on when it
resumes shows its whole history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from graphpart.errors import ConfigError
from graphpart.run.metrics import kind_of

FOLDER = "tensorboard"
INSTALL = "pip install 'graphpart[tensorboard]'"
# (metrics.jsonl kind, key) -> TensorBoard tag
TAGS: dict[tuple[str, str], str] = {
    ("step", "loss"): "loss/step",
    ("epoch", "train_loss"): "loss/train",
    ("epoch", "test_loss"): "loss/test",
    ("epoch", "test_accuracy"): "accuracy/test",
}


def require() -> ModuleType:
    """tensorboardX, or a one-line ConfigError saying how to install it."""
    try:
        import tensorboardX
    except ImportError:
        raise ConfigError(
            "train.tensorboard=true needs the tensorboardX package, which is not installed: "
            f"{INSTALL} (or pip install tensorboardX), or set train.tensorboard=false"
        ) from None
    return tensorboardX


def scalars(row: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(tag, value) of each scalar a metrics.jsonl row gives."""
    kind = kind_of(row)
    return [
        (tag, float(row[key]))
        for (k, key), tag in TAGS.items()
        if k == kind and row.get(key) is not None
    ]


class EventLog:
    """The run's TensorBoard log: a SummaryWriter on RUN_DIR/tensorboard/."""

    def __init__(self, run_path: Path, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        self.folder = Path(run_path) / FOLDER
        self._writer: Any = None
        self.reopen(rows)

    def reopen(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Start a fresh event file holding `rows` (the run's metrics so far)."""
        tbx = require()
        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("events.out.tfevents.*"):
            old.unlink(missing_ok=True)
        self._writer = tbx.SummaryWriter(logdir=str(self.folder), flush_secs=10)
        for row in rows:
            self.write(row, flush=False)
        self._writer.flush()

    def write(self, row: Mapping[str, Any], flush: bool = True) -> None:
        """Add a metrics.jsonl row's scalars (an epoch row's are flushed to disk at once)."""
        step, when = int(row["step"]), row.get("time")
        for tag, value in scalars(row):
            self._writer.add_scalar(tag, value, global_step=step, walltime=when)
        if flush and kind_of(row) == "epoch":
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
