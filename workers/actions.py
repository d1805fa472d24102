"""One stage's actions in a step: what each runs, where its input comes from and goes to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageAction:
    """The forward ("F") or backward ("B") pass of micro-batch `mb` on one stage.

    `receives`: the input comes from a neighbour (F: the previous stage's activation, B: the
    next stage's gradient) rather than from the minibatch (F on the first stage) or from
    nowhere (B on the last stage, which starts from its own loss). `sends`: the output goes to
    a neighbour (F: the next stage, B: the previous one). `labels`: the forward also takes
    the micro-batch's labels (the last stage, where the loss is).
    """

    kind: str
    mb: int
    receives: bool
    sends: bool
    labels: bool = False

    def __str__(self) -> str:
        return f"{self.kind}{self.mb}"
