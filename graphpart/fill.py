"""W fills a stage's waits: the order a stage runs a split list in, given what has arrived.

A zero-bubble list places each weight gradient (W) where, at equal action times, the stage
would otherwise idle. Real times are not equal and not steady: a W placed before a forward
whose input arrives while the W runs delays that forward, and with it the next stage (on a
K=2 ZB-H1 at M=8 the last stage's W1 ran from 35.0 to 41.3 ms while stage 0's F2 arrived at
38.6, and stage 0 then waited 1.3-11 ms for each I). So the executor takes the list's F, I
and B in their order, and runs the W's, in their own order, in pieces, only where the next
of those cannot run yet: its input has not arrived, or running it would hold more
micro-batches than the list ever holds. The simulator follows the same rule.

What stays as the list has it, so results are bit for bit the list's: the order of the F's,
I's and B's (losses and cotangents), and the order of the W's and of each W's calls (each
weight gradient sums the micro-batches in the same order). What moves is only when each W
piece runs. Memory never exceeds the list's own: a forward runs only while fewer
micro-batches are in flight (F done, W not) than the list's peak, an I only while fewer are
pending (I done, W not) than its peak; where neither may run, a W always can (its I comes
before it in the list, and every F, I and B before the blocked one has run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Move = tuple[int, int | None]  # (index in the list, None: the action whole | W piece p)


class Fill:
    """One stage's walk over its list (action kinds "F", "I", "B", "W" and micro-batches):
    `next(ready)` says what to run now, `ran(move)` records that it ran."""

    def __init__(self, kinds: Sequence[str], mbs: Sequence[int], pieces: int = 1) -> None:
        if len(kinds) != len(mbs):
            raise ValueError(f"{len(kinds)} kinds for {len(mbs)} micro-batches: give one each")
        if pieces < 1:
            raise ValueError(f"pieces={pieces}: a W runs in 1 or more pieces")
        self.kinds, self.mbs, self.pieces = list(kinds), list(mbs), pieces
        self.flight_limit = _peak(self.kinds, {"F": 1, "B": -1, "W": -1})
        self.pending_limit = _peak(self.kinds, {"I": 1, "W": -1})
        self._xs = [i for i, k in enumerate(self.kinds) if k != "W"]  # F, I, B in order
        self._ws = [i for i, k in enumerate(self.kinds) if k == "W"]  # W in order
        self._x = self._w = self._piece = 0
        self._flight = self._pending = 0
        self._inputs_done: set[int] = set()  # micro-batches whose I ran

    def next(self, ready: Callable[[int], bool]) -> Move | None:
        """What to run now: the next F, I or B (`(i, None)`; it may still wait for its input)
        where it is allowed and either `ready(i)` (its input is here, or it needs none) or no
        W may run; else a piece of the next W (`(i, p)`). None once the list is done."""
        x = self._xs[self._x] if self._x < len(self._xs) else None
        w = self._ws[self._w] if self._w < len(self._ws) else None
        w_ok = w is not None and self.mbs[w] in self._inputs_done
        if x is not None and self._allowed(x) and (not w_ok or ready(x)):
            return (x, None)
        if w_ok:
            assert w is not None
            return (w, self._piece)
        if x is None and w is None:
            return None
        # unreachable for a list whose own order is valid: a W's I comes before it
        raise RuntimeError(f"no action may run: next {self._name(x)}, next W {self._name(w)}")

    def ran(self, move: Move) -> bool:
        """Record that `move` ran; True when it completed its action (a W: its last piece)."""
        i, piece = move
        kind, mb = self.kinds[i], self.mbs[i]
        if piece is None:
            if self._x >= len(self._xs) or self._xs[self._x] != i:
                raise RuntimeError(f"{self._name(i)} ran out of its list's order")
            self._x += 1
            self._flight += {"F": 1, "B": -1}.get(kind, 0)
            if kind == "I":
                self._pending += 1
                self._inputs_done.add(mb)
            return True
        if self._w >= len(self._ws) or self._ws[self._w] != i or piece != self._piece:
            raise RuntimeError(f"piece {piece} of {self._name(i)} ran out of its order")
        self._piece += 1
        if self._piece < self.pieces:
            return False
        self._piece, self._w = 0, self._w + 1
        self._flight -= 1
        self._pending -= 1
        return True

    def _allowed(self, i: int) -> bool:
        kind = self.kinds[i]
        if kind == "F":
            return self._flight < self.flight_limit
        return kind != "I" or self._pending < self.pending_limit

    def _name(self, i: int | None) -> str:
        return "none" if i is None else f"{self.kinds[i]}{self.mbs[i]}"


def _peak(kinds: Sequence[str], step: dict[str, int]) -> int:
    live = peak = 0
    for k in kinds:
        live += step.get(k, 0)
        peak = max(peak, live)
    return peak


def fills(kinds: Sequence[str]) -> bool:
    """Whether a list has W's to fill with (a split backward)."""
    return "W" in kinds
