"""Timelines from the ledger: forward/backward spans and a Chrome trace with memory counters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graphpart.plan.memory import CATEGORIES, MemoryPrediction
from graphpart.tools.profile.measure import Measurement


def spans(events: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Forward and backward spans of one stage's ledger events: kind, mb, step, start, end."""
    out = []
    open_: dict[tuple[str, str], float] = {}
    step = 1
    for t, kind, detail, _ in events:
        if kind in ("F", "B", "I", "W"):
            open_[kind, detail] = t
        elif kind in ("F_end", "B_end", "I_end", "W_end"):
            k = kind[0]
            start = open_.pop((k, detail), None)
            if start is not None:
                out.append({"kind": k, "mb": int(detail), "step": step, "start": start, "end": t})
        elif kind == "step":
            step += 1
    return out


def chrome_trace(m: Measurement, pred: MemoryPrediction | None = None) -> dict[str, Any]:
    """Chrome trace events: per worker (pid = its index; named "stage k", "replica r" or
    "replica r, stage k") F/B spans ("X") and memory counters ("C")."""
    ev: list[dict[str, Any]] = []
    us = 1e6
    for k, events in enumerate(m.events):
        off = m.offsets[k]
        ev.append(
            {"name": "process_name", "ph": "M", "pid": k, "tid": 0, "args": {"name": m.name(k)}}
        )
        ev.append(
            {"name": "thread_name", "ph": "M", "pid": k, "tid": 0, "args": {"name": "compute"}}
        )
        for sp in spans(events):
            ev.append(
                {
                    "name": f"{sp['kind']}{sp['mb']}",
                    "cat": "forward" if sp["kind"] == "F" else "backward",
                    "ph": "X",
                    "ts": (sp["start"] + off) * us,
                    "dur": (sp["end"] - sp["start"]) * us,
                    "pid": k,
                    "tid": 0,
                    "args": {"micro_batch": sp["mb"], "step": sp["step"]},
                }
            )
        slot = 0
        if pred is not None and pred.stages[k].in_flight:
            slot = pred.stages[k].bytes["activation"] // pred.stages[k].in_flight
        live = 0
        for t, kind, detail, by in events:
            ts = (t + off) * us
            ev.append(
                {
                    "name": "memory (bytes)",
                    "ph": "C",
                    "ts": ts,
                    "pid": k,
                    "args": dict(zip(CATEGORIES, by, strict=True)),
                }
            )
            if kind in ("F", "B_end", "W_end") and detail != "-1":
                live += 1 if kind == "F" else -1
                ev.append(
                    {
                        "name": "activations in use (bytes)",
                        "ph": "C",
                        "ts": ts,
                        "pid": k,
                        "args": {"in use": live * slot},
                    }
                )
            if kind == "step":
                ev.append(
                    {"name": f"step {detail}", "ph": "i", "s": "p", "ts": ts, "pid": k, "tid": 0}
                )
    if m.runtime == "local":
        for pid, samples in m.rss_samples.items():
            for t, r in samples:
                ev.append(
                    {
                        "name": f"process RSS (pid {pid}, bytes)",
                        "ph": "C",
                        "ts": (t - m.t0) * us,
                        "pid": len(m.events),
                        "args": {"rss": r},
                    }
                )
        if m.rss_samples:
            ev.append(
                {
                    "name": "process_name",
                    "ph": "M",
                    "pid": len(m.events),
                    "tid": 0,
                    "args": {"name": "process"},
                }
            )
    note = (
        "one process: stage clocks aligned exactly"
        if m.aligned
        else "one actor per stage: each stage's times count from its own ledger's creation"
    )
    return {"traceEvents": ev, "displayTimeUnit": "ms", "otherData": {"alignment": note}}
