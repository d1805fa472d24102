"""Seconds each layer's actions took with the real kernels, at several micro-batch sizes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from graphpart.errors import PlanError

KINDS = ("F", "I", "W")  # forward, input gradient, weight gradient


@dataclass(frozen=True)
class LayerTimes:
    """Per layer (`ids`: the graph's layer numbers, in order), the seconds of its forward (F),
    input gradient (I: none for the model's first layer, whose input needs no gradient) and
    weight gradient (W) of one micro-batch of `rows[r]` rows, measured (`seconds[r][i]` a
    (F, I, W) triple for layer `ids[i]`), and of its `update` once a step (the regulariser,
    the optimizer step, the gradients zeroed).

    A stage's action is the sum of its layers' (the time model's per-action cost is added
    apart). Between two measured row counts a time is interpolated linearly (an action costs
    about a + b rows); beyond the last, extrapolated along the last two; below the first, the
    first's (a few rows cost their fixed part).
    """

    ids: tuple[int, ...]
    rows: tuple[int, ...]
    seconds: tuple[tuple[tuple[float, float, float], ...], ...]
    update: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.rows or list(self.rows) != sorted(set(self.rows)) or self.rows[0] < 1:
            raise PlanError(f"LayerTimes.rows={list(self.rows)}: give increasing counts >= 1")
        if len(self.seconds) != len(self.rows):
            raise PlanError(
                f"LayerTimes: {len(self.seconds)} rows of times for {len(self.rows)} row counts"
            )
        layers = len(self.ids)
        if len(self.update) != layers or len(set(self.ids)) != layers:
            raise PlanError(
                f"LayerTimes: {len(self.update)} updates for layers {list(self.ids)} (distinct)"
            )
        for r, per in zip(self.rows, self.seconds, strict=True):
            if len(per) != layers:
                raise PlanError(f"LayerTimes at {r} rows: {len(per)} layers, not {layers}")
            for j, t in zip(self.ids, per, strict=True):
                if len(t) != 3 or not all(math.isfinite(v) and v >= 0 for v in t):
                    raise PlanError(
                        f"LayerTimes at {r} rows, layer {j}: {t!r}; want 3 seconds >= 0 (F, I, W)"
                    )
        if not all(math.isfinite(v) and v >= 0 for v in self.update):
            raise PlanError(f"LayerTimes.update={list(self.update)}: want seconds >= 0")

    def _index(self, layer: int) -> int:
        try:
            return self.ids.index(layer)
        except ValueError:
            raise PlanError(f"layer {layer} was not timed; timed: {list(self.ids)}") from None

    def action_s(self, kind: str, layers: Iterable[int], rows: float) -> float:
        """Seconds of one `kind` action ("F", "I", "W", or "B" = I + W) over `layers` on a
        micro-batch of `rows` rows."""
        if kind == "B":
            return self.action_s("I", layers, rows) + self.action_s("W", layers, rows)
        if kind not in KINDS:
            raise PlanError(f"action kind {kind!r}; use one of F, I, W, B")
        k = KINDS.index(kind)
        cols = [self._index(j) for j in layers]
        return sum(self._at([per[i][k] for per in self.seconds], rows) for i in cols)

    def update_s(self, layers: Iterable[int]) -> float:
        """Seconds of the step's update of `layers`."""
        return sum(self.update[self._index(j)] for j in layers)

    def _at(self, ys: Sequence[float], rows: float) -> float:
        xs = self.rows
        if rows <= xs[0] or len(xs) == 1:
            return ys[0]
        i = next((i for i in range(1, len(xs)) if rows <= xs[i]), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return max(0.0, y0 + (y1 - y0) * (rows - x0) / (x1 - x0))


def slowest(times: Sequence[LayerTimes]) -> LayerTimes:
    """Of several processes' LayerTimes of the same layers at the same rows, each time the
    largest: devices that compute at once wait for the slowest of them (a data-parallel
    step ends with its slowest replica, a pipeline's stage with its slowest neighbour)."""
    if not times:
        raise PlanError("slowest: no LayerTimes given")
    first = times[0]
    for t in times[1:]:
        if (t.ids, t.rows) != (first.ids, first.rows):
            raise PlanError(
                f"slowest: layers {list(t.ids)} at rows {list(t.rows)} against layers "
                f"{list(first.ids)} at rows {list(first.rows)}"
            )
    seconds = tuple(
        tuple(
            tuple(max(t.seconds[r][i][k] for t in times) for k in range(len(KINDS)))
            for i in range(len(first.ids))
        )
        for r in range(len(first.rows))
    )
    update = tuple(max(t.update[i] for t in times) for i in range(len(first.ids)))
    return LayerTimes(first.ids, first.rows, seconds, update)
