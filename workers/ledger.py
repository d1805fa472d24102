"""A ledger of every array a worker holds, by category, with peaks and a timeline of events."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from graphpart.ir.lower import CATEGORIES
from workers.stats import LedgerSnapshot

__all__ = ["CATEGORIES", "Entry", "Ledger"]


@dataclass
class Entry:
    name: str
    category: str
    nbytes: int


@dataclass
class Ledger:
    """Counts bytes by category as arrays are allocated and freed; keeps peaks and events.

    `events` rows are (t_seconds, kind, detail, bytes_by_category_tuple); kinds are
    "alloc", "free", "F", "B", "I", "W" (a split backward's halves) and their "_end"s, "step",
    "mark".
    """

    keep_events: bool = True
    entries: dict[str, Entry] = field(default_factory=dict)
    current: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    peak: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    peak_total: int = 0
    events: list[tuple[float, str, str, tuple[int, ...]]] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    def add(self, name: str, category: str, nbytes: int) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"category {category!r}; valid: {CATEGORIES}")
        if name in self.entries:
            raise ValueError(f"ledger entry {name!r} already exists")
        self.entries[name] = Entry(name, category, int(nbytes))
        self.current[category] += int(nbytes)
        self.peak[category] = max(self.peak[category], self.current[category])
        self.peak_total = max(self.peak_total, self.total)
        self.mark("alloc", name)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    @property
    def total(self) -> int:
        return sum(self.current.values())

    def mark(self, kind: str, detail: str = "") -> None:
        if self.keep_events:
            t = time.perf_counter() - self.t0
            self.events.append((t, kind, detail, tuple(self.current[c] for c in CATEGORIES)))

    def snapshot(self) -> LedgerSnapshot:
        return LedgerSnapshot(
            current=dict(self.current),
            peak=dict(self.peak),
            peak_total=self.peak_total,
            t0=self.t0,
            entries={e.name: (e.category, e.nbytes) for e in self.entries.values()},
        )
