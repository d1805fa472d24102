"""Reports: the plan (stages, costs, boundaries, bubble), a run's summary.json and curves.png."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from graphpart.engines import Rss, StageStats, critical_path, describe_blas
from graphpart.plan import schedule as sch
from graphpart.plan.batching import microbatch_rows, split_batch
from graphpart.plan.kinds import is_virtual
from graphpart.plan.memory import budget_problem
from graphpart.plan.partition import Plan
from graphpart.run.checkpoint import RunDir, atomic_write
from graphpart.run.config import Config
from graphpart.run.metrics import of_kind
from graphpart.run.progress import Progress
from graphpart.run.setup import (
    Setup,
    budget_of,
    predicted_memory,
    transport_of,
    uses_ray,
)
from graphpart.run.virtual_report import virtual_plan_report
from graphpart.units import human_bytes, table


def plan_report(s: Setup, cfg: Config) -> dict[str, Any]:
    """The plan as a table and as data; memory columns come from the analytic model."""
    plan, p, t = s.plan, cfg.pipeline, cfg.train
    data = plan_dict(plan, cfg)
    if is_virtual(p.schedule):  # several stages a device: by device and chunk
        return virtual_plan_report(s, cfg, data)
    B, M, K, R = t.batch_size, p.microbatches, plan.k, p.data_parallel
    share = microbatch_rows(B, R)  # the rows a replica runs (all of them without replicas)
    M = min(M, share)
    mb = max(r.stop - r.start for r in split_batch(share, M))
    itemsize = np.dtype(t.dtype).itemsize
    actions = sch.make(p.schedule, K, M)
    # stage time = the plan's layer costs (FLOPs or measured), split F/B in the FLOP ratio
    layers = plan.graph.layers
    cost = [sum(plan.layer_costs[layers.index(x)] for x in st.layers) for st in plan.stages]
    fshare = [st.flops_fwd / max(1, st.flops_fwd + st.flops_bwd) for st in plan.stages]
    fwd = [c * s for c, s in zip(cost, fshare, strict=True)]
    bwd = [c * (1 - s) for c, s in zip(cost, fshare, strict=True)]
    tl = sch.simulate(actions, fwd, bwd)
    basis = "measured" if "measured" in plan.strategy else "FLOP-proportional"
    mem = predicted_memory(s)  # per replica with data parallelism: what train checks
    rows = []
    for st, d in zip(plan.stages, data["stages"], strict=True):
        row = [
            st.index,
            ",".join(map(str, st.layers)),
            " ".join(st.params),
            human_bytes(d["param_bytes"]),
            f"{(st.flops_fwd + st.flops_bwd) * B / 1e9:.3f}",
            human_bytes(st.input_width * itemsize * mb) if st.index else "-",
            human_bytes(st.output_width * itemsize * mb) if st.output else "-",
            sch.peak_in_flight(actions[st.index]),
            human_bytes(mem.stages[st.index].total),
        ]
        rows.append(row)
    headers = [
        "stage",
        "layers",
        "params",
        "param bytes",
        "GFLOP/step",
        "recv/mb",
        "send/mb",
        "in-flight",
        "peak memory",
    ]
    data.update(
        {
            "batch": B,
            "data_parallel": R,
            "microbatches": M,
            "schedule": p.schedule,
            "predicted_bubble": tl.bubble,
            "peak_in_flight": list(tl.peak_in_flight),
            "memory": mem.to_dict(),
        }
    )
    budget = budget_of(cfg)
    problem = budget_problem(mem, budget) if budget is not None else None
    if budget is not None:
        data["memory_budget"] = {"bytes": budget, "fits": not problem, "problem": problem}
    replicas = (
        f"{R} data-parallel replicas, each {share} rows of the batch of {B} "
        f"in {M} micro-batch(es) of <= {mb} rows (memory per replica), "
        if R > 1
        else f"batch {B} in {M} micro-batch(es) of <= {mb} rows, "
    )
    text = (
        f"plan: {K} stage(s), strategy {plan.strategy}, schedule {p.schedule}, "
        f"{replicas}{t.dtype}\n"
        + table(headers, rows)
        + f"\npredicted bubble ({basis} stage times): {tl.bubble:.1%}\n"
        + tl.ascii()
        + (
            ""
            if budget is None
            else f"\nmemory budget {p.memory_budget}: "
            + (
                f"the plan {problem}; `graphpart train` would refuse it (try more --stages, "
                "--recompute true, more --microbatches, a smaller --batch-size, or "
                "`graphpart plan --auto`)"
                if problem
                else "every stage's predicted peak fits"
            )
        )
    )
    return {"text": text, "data": data}


def plan_dict(plan: Plan, cfg: Config | None = None) -> dict[str, Any]:
    """The plan as plain data (for plan.json and `graphpart plan --json`)."""
    itemsize = np.dtype(cfg.train.dtype if cfg else "float32").itemsize
    out = {
        "strategy": plan.strategy,
        "stages": [
            {
                "stage": st.index,
                "layers": list(st.layers),
                "params": list(st.params),
                "param_count": st.param_count(),
                "param_bytes": st.param_count() * itemsize,
                "flops_per_sample": {"forward": st.flops_fwd, "backward": st.flops_bwd},
                "input": st.input,
                "output": st.output,
                "boundary_in_bytes_per_sample": st.input_width * itemsize,
                "boundary_out_bytes_per_sample": st.output_width * itemsize,
            }
            for st in plan.stages
        ],
    }
    return out


def run_summary(
    s: Setup,
    run: RunDir,
    st: Progress,
    *,
    wall: float,
    startup: float | None,
    failures: int,
    stats: list[StageStats],
) -> dict[str, Any]:
    """summary.json of a completed run: its final figures, throughput and stages' stats."""
    cfg = s.config
    t, p, m = cfg.train, cfg.pipeline, st.metrics
    return {
        "state": "completed",
        "run_dir": str(run.path),
        "final_loss": m.get("train_loss"),
        "test_loss": m.get("test_loss"),
        "test_accuracy": m.get("test_accuracy"),
        "epochs": t.epochs,
        "steps": st.step,
        "wall_s": wall,
        "train_s": st.train_time,
        "startup_s": startup or 0.0,
        **st.throughput(),
        "failures_recovered": failures,
        "stages": p.stages,
        "data_parallel": p.data_parallel,
        "microbatches": p.microbatches,
        "schedule": p.schedule,
        "runtime": "ray" if uses_ray(cfg) else "local",
        "transport": transport_of(cfg),
        "blas": describe_blas(),  # as this machine decides (workers on other nodes decide there)
        "stage_stats": [stage_summary(x) for x in stats],
        "allreduce_critical_path": allreduce_path(stats, p.stages),
    }


def allreduce_path(stats: list[StageStats], stages: int) -> list[dict[str, Any]] | None:
    """Data parallelism: per stage, its replicas' last steps' all-reduces set side by side
    (engines.critical_path, over the steps every replica still keeps): a step's mean
    communication after the last replica's backward, that replica's work inside its backward
    and own all-reduce time, and the others' wait for it. None without data parallelism, or
    where a stage's replicas run on several machines (their clocks do not compare)."""
    out = []
    for k in range(stages):
        held = [x for x in stats if x.stage % stages == k]
        marks = [x.reduce_marks for x in held]
        n = min((len(m) for m in marks), default=0)
        if len(marks) < 2 or n == 0 or len({x.node for x in held}) > 1:
            return None
        c = critical_path([m[len(m) - n :] for m in marks])
        out.append(
            {
                "stage": k,
                "steps": c.steps,
                "exposed_s": round(c.exposed / c.steps, 6),
                "polled_s": round(c.polled / c.steps, 6),
                "own_s": round(c.own / c.steps, 6),
                "wait_s": round(c.wait / c.steps, 6),
            }
        )
    return out


def stage_summary(st: StageStats) -> dict[str, Any]:
    """One stage's (or replica's) line of summary.json: busy time, bytes, peaks."""
    return {
        "stage": st.stage,
        "busy_s": round(st.busy.total, 6),
        "forward_s": round(st.busy.forward, 6),
        "backward_s": round(st.busy.backward, 6),
        "finish_s": round(st.busy.finish, 6),
        "allreduce_s": round(st.busy.allreduce, 6),
        "allreduce_exposed_s": round(st.busy.exposed, 6),  # the part the step waited for
        "bytes_sent": st.bytes_sent,
        "bytes_received": st.bytes_received,
        "peak_bytes": st.memory.peak_total,  # the ledger: the model's own accounting
        "peak_by_category": dict(st.memory.peak),
        # what the OS measured: the worker process's resident peak over its baseline, and
        # its private + shared growth (file pages, library code first run, left out)
        "resident_baseline": st.rss.baseline,
        "resident_growth": st.rss.peak - st.rss.baseline,
        "resident_allocated": _allocated(st.rss),
    }


def _allocated(r: Rss) -> int | None:
    """Private + shared resident growth since the baseline (Linux), or None where unknown."""
    keys = ("RssAnon", "RssShmem")
    if not all(k in r.parts_now and k in r.parts_baseline for k in keys):
        return None
    return sum(r.parts_now[k] - r.parts_baseline[k] for k in keys)


def write_curves(run: RunDir) -> None:
    """curves.png in the run directory: train and test loss (and test accuracy) per epoch,
    from metrics.jsonl's epoch rows."""
    rows = of_kind(run.read_metrics(), "epoch")
    if not rows:
        return
    import matplotlib  # loaded only here: it takes a while to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = "test_accuracy" in rows[0]
    fig, axes = plt.subplots(1, 2 if acc else 1, figsize=(9 if acc else 5, 3.6), squeeze=False)
    e = [r["epoch"] for r in rows]
    ax = axes[0, 0]
    ax.plot(e, [r["train_loss"] for r in rows], marker=".", label="train: objective J = L + s")
    ax.plot(e, [r["test_loss"] for r in rows], marker=".", label="test: data loss L")
    ax.set(xlabel="epoch", ylabel="loss (epoch mean)", yscale="log")
    if acc:
        axes[0, 1].plot(e, [r["test_accuracy"] for r in rows], marker=".", label="test accuracy")
        axes[0, 1].set(xlabel="epoch", ylabel="test accuracy")
    for r in of_kind(run.read_metrics(), "resume"):  # where --resume went on, what it changed
        what = ", ".join(
            f"{k.split('.')[-1]} {a}->{b}"
            for k, (a, b) in r.get("changed", {}).items()
            if k != "train.epochs"
        )
        for a in axes[0]:
            a.axvline(r["epoch"], color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(
            "resumed" + (f": {what}" if what else ""),
            (r["epoch"], 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="grey",
        )
    for a in axes[0]:
        a.legend(fontsize=8)
    fig.suptitle(run.path.name, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(run.path / "curves.png", buf.getvalue())
