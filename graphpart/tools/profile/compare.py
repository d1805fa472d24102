"""Predicted vs measured memory per stage and category, and resident memory, as tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graphpart.engines import by_process
from graphpart.plan.memory import CATEGORIES, MemoryPrediction
from graphpart.run.report import human_bytes, table
from graphpart.tools.profile.measure import Measurement


def compare(pred: MemoryPrediction, m: Measurement) -> list[dict[str, Any]]:
    """Per worker (a stage, a replica, or stage k of replica r) and category: predicted and
    measured peak bytes and their ratio; `stage` is the worker's index (r K + k), `worker`
    its name ("stage 1", "replica 0", "replica 0, stage 1")."""
    out = []
    for sp, st in zip(pred.stages, m.stats, strict=True):
        peak = st.memory.peak
        rows = {}
        for c in (*CATEGORIES, "total"):
            p = sp.total if c == "total" else sp.bytes[c]
            meas = st.memory.peak_total if c == "total" else peak[c]
            rows[c] = {
                "predicted": p,
                "measured": meas,
                "ratio": (meas / p) if p else (1.0 if meas == 0 else float("inf")),
            }
        out.append(
            {
                "stage": sp.index,
                "worker": m.name(sp.index),
                "pid": st.pid,
                "in_flight": sp.in_flight,
                "slots": st.slots,
                "categories": rows,
            }
        )
    return out


def comparison_table(cmp: list[dict[str, Any]], pred: MemoryPrediction) -> str:
    """Per stage: predicted and measured peak bytes by category, and their ratio."""
    lines = []
    for row, sp in zip(cmp, pred.stages, strict=True):
        who = row.get("worker") or f"stage {row['stage']}"
        lines.append(
            f"{who} (pid {row['pid']}): {sp.in_flight} micro-batch(es) "
            f"in flight predicted, {row['slots']} activation slot(s) measured, "
            f"{sp.rows} rows per micro-batch"
        )
        body = []
        for c, v in row["categories"].items():
            body.append(
                [
                    c,
                    human_bytes(v["predicted"]),
                    human_bytes(v["measured"]),
                    f"{v['ratio']:.3f}" if v["predicted"] else "-",
                ]
            )
        lines.append(table(["category", "predicted", "measured peak", "ratio"], body))
        lines.append("")
    return "\n".join(lines).rstrip()


def rss_table(m: Measurement, pred: MemoryPrediction) -> str:
    """Resident memory per process against the bytes the model says it allocates after baseline."""
    if not m.rss:
        return "resident memory: not measured (actors on another node)"
    body = []
    for r in m.rss:
        expect = _expected_growth(m, pred, r["stages"])
        body.append(
            [
                r["pid"],
                _workers(m, r["stages"]),
                human_bytes(r["baseline"]),
                human_bytes(r["peak"]),
                human_bytes(r["growth"]),
                human_bytes(expect),
                f"{r['growth'] / expect:.2f}" if expect else "-",
                _parts(r.get("parts_growth", {})),
                _allocated_ratio(r.get("parts_growth", {}), expect),
                r["peak_from"],
            ]
        )
    note = (
        "baseline: this process after its stage worker's JIT warm-up, before it allocated "
        "anything, as a Ray worker's"
        if m.runtime == "local"
        else "baseline: each stage worker after its JIT warm-up, before it allocated anything"
    )
    headers = [
        "pid", "worker(s)", "baseline", "peak", "growth", "predicted", "ratio",
        "growth: private/files/shared", "(private+shared) ratio", "peak from",
    ]  # fmt: skip
    return (
        "resident memory (psutil RSS; " + note + "; the (private+shared) ratio leaves out file "
        "pages: library code run for the first time, which the process shares, not allocates)\n"
        + table(headers, body)
    )


def _workers(m: Measurement, workers: Sequence[int]) -> str:
    """The workers one process runs: their names ("r0 s1"), or a range of indices."""
    if len(workers) == 1:
        return m.name(workers[0]).replace("replica ", "r").replace(", stage ", " s")
    return f"{min(workers)}-{max(workers)}" if len(workers) > 2 else ",".join(map(str, workers))


def _expected_growth(m: Measurement, pred: MemoryPrediction, stages: Sequence[int]) -> int:
    return sum(pred.stages[k].total for k in stages)


def _parts(g: dict[str, int]) -> str:
    """Growth by kind (workers.hwm.RSS_PARTS), at the end of the run: private memory (tensors,
    the heap), pages of mapped files (library code run for the first time), shared memory."""
    if not g:
        return "-"
    return "/".join(human_bytes(max(g.get(k, 0), 0)) for k in ("RssAnon", "RssFile", "RssShmem"))


def allocated_growth(g: dict[str, int]) -> int | None:
    """What the process allocated since its baseline, as the OS counts it: private plus
    shared resident growth (file pages, library code, left out); None where unknown."""
    if "RssAnon" not in g or "RssShmem" not in g:
        return None
    return g["RssAnon"] + g["RssShmem"]


def _allocated_ratio(g: dict[str, int], expect: int) -> str:
    got = allocated_growth(g)
    return "-" if got is None or not expect else f"{got / expect:.2f}"


def traced_rows(m: Measurement) -> list[dict[str, Any]]:
    """Per process that traced its allocations (Ray workers, when profiling; a device's
    virtual stages share one): NumPy's arrays alive at the end as tracemalloc counted them,
    against the ledgers' bytes of the same arrays (their entries less the shared-memory
    channels, which are mapped, not allocated)."""
    out = []
    for pid, held in by_process([st for st in m.stats if st.traced is not None]).items():
        ledger = sum(
            n
            for st in held
            for name, (_, n) in st.memory.entries.items()
            if not name.startswith("channel:")
        )
        first = held[0].traced  # the process's tracer, started at its first worker's baseline
        out.append(
            {
                "stage": held[0].stage,
                "worker": _workers(m, [st.stage for st in held]),
                "pid": pid,
                "arrays": first.arrays,
                "ledger_arrays": ledger,
                "ratio": first.arrays / ledger if ledger else None,
                "traced_peak": first.peak,
                "tracer_overhead": first.overhead,
            }
        )
    return out


def traced_table(rows: list[dict[str, Any]]) -> str:
    """The arrays each worker allocated (tracemalloc, NumPy's domain) against the ledger."""
    if not rows:
        return "allocations: not traced (one process: tracing would slow the whole driver)"
    body = [
        [
            r.get("worker", r["stage"]),
            r["pid"],
            human_bytes(r["arrays"]),
            human_bytes(r["ledger_arrays"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.3f}",
            human_bytes(r["traced_peak"]),
            human_bytes(r["tracer_overhead"]),
        ]
        for r in rows
    ]
    headers = [
        "worker", "pid", "arrays (traced)", "ledger (no channels)", "ratio", "traced peak",
        "tracer's own",
    ]  # fmt: skip
    return (
        "allocations (tracemalloc in each worker from its baseline: NumPy's arrays alive now; "
        "the peak counts Python objects too; the tracer's own records are in the resident "
        "growth above)\n" + table(headers, body)
    )
