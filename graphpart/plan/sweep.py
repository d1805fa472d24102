"""What a pipeline action waits for, and the sweep that times rows of actions by it: the rules
the simulators share (schedule.simulate, virtual_sim.simulate, timing's core sharing)."""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence

Key = tuple[str, int, int]  # (kind, unit: a stage or a virtual stage, micro-batch)
Dependency = Callable[[Key], "tuple[Key, float] | None"]


def waits_for(
    key: Key, last: int, split: Container[tuple[int, int]], hop: Callable[[int, int], float]
) -> tuple[Key, float] | None:
    """The action `key` waits for and the delay after that one ends: F of unit s for F of s-1
    (plus the hop from s-1 to s), W for its own I, the last unit's B or I for its own F, any
    other B or I for the I (where `split` holds (s+1, mb): that unit splits its backward) or
    B of s+1 (plus the hop back); None for F of unit 0."""
    kind, s, m = key
    if kind == "F":
        return None if s == 0 else (("F", s - 1, m), hop(s - 1, s))
    if kind == "W":
        return ("I", s, m), 0.0
    if s == last:
        return ("F", s, m), 0.0
    return ("I" if (s + 1, m) in split else "B", s + 1, m), hop(s + 1, s)


def sweep(
    rows: Sequence[Sequence[Key]], seconds: Callable[[Key], float], dependency: Dependency
) -> tuple[list[tuple[int, int, float, float]], list[int]]:
    """Run each row's actions in order, one at a time, each as early as its dependency allows
    (a row a stage, or a device): (row, position, start, end) of every action that ran, and
    how far each row got (short of its end where it deadlocked)."""
    done: dict[Key, float] = {}
    free = [0.0] * len(rows)
    pos = [0] * len(rows)
    ran: list[tuple[int, int, float, float]] = []
    progress = True
    while progress:
        progress = False
        for r, keys in enumerate(rows):
            while pos[r] < len(keys):
                key = keys[pos[r]]
                dep = dependency(key)
                ready = 0.0
                if dep is not None:
                    if dep[0] not in done:
                        break
                    ready = done[dep[0]] + dep[1]
                start = max(free[r], ready)
                done[key] = free[r] = start + seconds(key)
                ran.append((r, pos[r], start, free[r]))
                pos[r] += 1
                progress = True
    return ran, pos
