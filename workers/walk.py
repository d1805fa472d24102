"""The one walk over a step's actions: which stage method each action kind calls, with what."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from workers.actions import StageAction

Call = Callable[..., Any]  # call(stage, action, method, *args): one stage method's call
Take = Callable[[int, StageAction], Any]  # (stage, action) -> its input from a neighbour or itself
Give = Callable[[int, StageAction, Any], None]  # (stage, action, output): sent, kept or dropped


def walk(
    actions: Iterable[tuple[int, StageAction]],
    call: Call,
    *,
    data: Callable[[int], Any],
    take: Take,
    give: Give,
    labels: Callable[[int], Any] = lambda mb: None,
    scale: Any = 1.0,
    infer: bool = False,
) -> None:
    """Run each (stage, action) in turn through `call(stage, action, method, *args)`.

    A forward ("F") is the stage's `forward(mb, x, labels or None, scale)` (`infer(x)` with
    `infer`), x being `take(stage, action)` where it receives, else `data(mb)` (the first
    stage's micro-batch); a backward ("B") is `backward(mb, take(stage, action), scale)` (the
    last stage's take gives what starts it from its own loss), its input-gradient part ("I")
    `backward_input(mb, take(stage, action), scale)` alike, and its weight-gradient part ("W")
    `backward_weight(mb, scale)` (no input: what its I kept). Each output goes to `give`.
    Every path that runs a schedule (a driver's `drive`, a stage's or a replica's own step,
    `value_and_grad`'s chain of programs) walks here, so a new action kind is added once: one
    entry in the table below. With virtual stages (several a worker) an action names its
    `chunk` and virtual `stage`: `call` runs it on that chunk's worker (a device's run_step) or
    on that virtual stage (a driver's), and `take`/`give` key its tensors by the stage.
    """

    def forward(k: int, a: StageAction) -> tuple[str, tuple[Any, ...]]:
        x = take(k, a) if a.receives else data(a.mb)
        if infer:
            return "infer", (x,)
        return "forward", (a.mb, x, labels(a.mb) if a.labels else None, scale)

    def backward(method: str) -> Callable[[int, StageAction], tuple[str, tuple[Any, ...]]]:
        return lambda k, a: (method, (a.mb, take(k, a), scale))

    table: dict[str, Callable[[int, StageAction], tuple[str, tuple[Any, ...]]]] = {
        "F": forward,
        "B": backward("backward"),
        "I": backward("backward_input"),
        "W": lambda k, a: ("backward_weight", (a.mb, scale)),
    }
    for k, a in actions:
        how = table.get(a.kind)
        if how is None:
            raise ValueError(f"action {a}: kind {a.kind!r} has no stage method")
        method, args = how(k, a)
        give(k, a, call(k, a, method, *args))
