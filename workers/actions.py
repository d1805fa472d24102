"""One stage's actions in a step: what each runs, where its input comes from and goes to."""

from __future__ import annotations

from dataclasses import dataclass

# What a kind's output carries between stages: "F" an activation, "B" a cotangent (B's and
# I's alike: a stage's I may answer the next stage's B or I), None nothing (W).
CARRIES: dict[str, str | None] = {"F": "F", "B": "B", "I": "B", "W": None}


@dataclass(frozen=True)
class StageAction:
    """The forward ("F") or backward ("B") pass of micro-batch `mb` on one stage, or the
    backward's input-gradient ("I") or weight-gradient ("W") part.

    `receives`: the input comes from a neighbour (F: the previous stage's activation, B or I:
    the next stage's gradient) rather than from the minibatch (F on the first stage) or from
    nowhere (B or I on the last stage, which starts from its own loss; W, which reads only
    what its I kept). `sends`: the output goes to a neighbour (F: the next stage, B or I: the
    previous one; W sends nothing). `labels`: the forward also takes the micro-batch's labels
    (the last stage, where the loss is).
    """

    kind: str
    mb: int
    receives: bool
    sends: bool
    labels: bool = False

    @property
    def carries(self) -> str | None:
        """What the output carries to a neighbour: "F" (activation), "B" (cotangent), None."""
        return CARRIES[self.kind]

    def __str__(self) -> str:
        return f"{self.kind}{self.mb}"
