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

    With virtual stages a worker (a device) holds several stages, its chunks: `chunk` picks
    the one that runs the action, `stage` is that chunk's virtual stage (-1: one stage a
    worker), and `near_in` / `near_out` say that the neighbour the input comes from or the
    output goes to is a chunk of the same worker (the V placement's turn), so the tensor
    stays in its process. The keys of a virtual stage's tensors name the virtual stage that
    sent them (`tag_in`, `tag_out`: "F3", "B4"), so that several stages' messages between two
    workers never collide; one stage a worker keys them by what they carry alone ("F", "B").
    """

    kind: str
    mb: int
    receives: bool
    sends: bool
    labels: bool = False
    chunk: int = 0
    stage: int = -1
    near_in: bool = False
    near_out: bool = False

    @property
    def carries(self) -> str | None:
        """What the output carries to a neighbour: "F" (activation), "B" (cotangent), None."""
        return CARRIES[self.kind]

    @property
    def tag_out(self) -> str:
        """The key its output is sent under: what it carries, and the sending virtual stage."""
        carries = self.carries or self.kind
        return carries if self.stage < 0 else f"{carries}{self.stage}"

    @property
    def tag_in(self) -> str:
        """The key its input arrives under: the previous virtual stage's activation (F), or
        the next one's cotangent (B, I)."""
        carries = self.carries or self.kind
        if self.stage < 0:
            return carries
        return f"{carries}{self.stage - 1 if carries == 'F' else self.stage + 1}"

    def __str__(self) -> str:
        return f"{self.kind}{self.mb}" + (f"c{self.chunk}" if self.chunk else "")
