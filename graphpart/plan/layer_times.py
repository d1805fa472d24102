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
    the optimizer step, the gradients zeroed). `seconds` is a step's first micro-batch, which
    meets its weights where the update left them; `warm`, where measured (same shape), a
    later one, which meets them where the previous micro-batch left them: a step of M
    micro-batches costs one of the first and M - 1 of the second (at 32 rows a micro-batch,
    the second was 20-25% faster on the MLP 784-1024-1024-1024-10 in the twelfth session).

    A stage's action is the sum of its layers' (the time model's per-action cost is added
    apart). Between two measured row counts a time is interpolated linearly (an action costs
    about a + b rows); beyond the last, extrapolated along the last two; below the first, the
    first's (a few rows cost their fixed part).
    """

    ids: tuple[int, ...]
    rows: tuple[int, ...]
    seconds: tuple[tuple[tuple[float, float, float], ...], ...]
    update: tuple[float, ...]
    warm: tuple[tuple[tuple[float, float, float], ...], ...] | None = None

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
        if self.warm is not None and len(self.warm) != len(self.rows):
            raise PlanError(
                f"LayerTimes.warm: {len(self.warm)} rows of times for {len(self.rows)} row counts"
            )
        for table in (self.seconds, *(() if self.warm is None else (self.warm,))):
            for r, per in zip(self.rows, table, strict=True):
                if len(per) != layers:
                    raise PlanError(f"LayerTimes at {r} rows: {len(per)} layers, not {layers}")
                for j, t in zip(self.ids, per, strict=True):
                    if len(t) != 3 or not all(math.isfinite(v) and v >= 0 for v in t):
                        raise PlanError(
                            f"LayerTimes at {r} rows, layer {j}: {t!r}; "
                            "want 3 seconds >= 0 (F, I, W)"
                        )
        if not all(math.isfinite(v) and v >= 0 for v in self.update):
            raise PlanError(f"LayerTimes.update={list(self.update)}: want seconds >= 0")

    def _index(self, layer: int) -> int:
        try:
            return self.ids.index(layer)
        except ValueError:
            raise PlanError(f"layer {layer} was not timed; timed: {list(self.ids)}") from None

    def action_s(
        self, kind: str, layers: Iterable[int], rows: float, microbatches: int = 1
    ) -> float:
        """Seconds of one `kind` action ("F", "I", "W", or "B" = I + W) over `layers` on a
        micro-batch of `rows` rows: the mean over a step of `microbatches` of them (the
        first's time and, where measured, M - 1 times the `warm` one's)."""
        if kind == "B":
            return sum(self.action_s(k, layers, rows, microbatches) for k in "IW")
        if kind not in KINDS:
            raise PlanError(f"action kind {kind!r}; use one of F, I, W, B")
        k = KINDS.index(kind)
        cols = [self._index(j) for j in layers]
        first = sum(self._at([per[i][k] for per in self.seconds], rows) for i in cols)
        m = max(1, int(microbatches))
        if self.warm is None or m == 1:
            return first
        later = sum(self._at([per[i][k] for per in self.warm], rows) for i in cols)
        return (first + (m - 1) * later) / m

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

    def most(tables: Sequence[Sequence[Sequence[Sequence[float]]]]) -> tuple:
        return tuple(
            tuple(
                tuple(max(t[r][i][k] for t in tables) for k in range(len(KINDS)))
                for i in range(len(first.ids))
            )
            for r in range(len(first.rows))
        )

    update = tuple(max(t.update[i] for t in times) for i in range(len(first.ids)))
    warm = None
    if all(t.warm is not None for t in times):
        warm = most([t.warm for t in times])  # type: ignore[misc]
    return LayerTimes(first.ids, first.rows, most([t.seconds for t in times]), update, warm)
