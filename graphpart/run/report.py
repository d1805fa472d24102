"""Text and JSON reports of a plan: stages, costs, boundary tensors, predicted bubble."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphpart.plan import schedule as sch
from graphpart.plan.batching import split_batch
from graphpart.plan.memory import budget_problem, predict
from graphpart.run.train import budget_of, memory_kwargs, plan_dict, uses_channels
from graphpart.units import human_bytes, table


def plan_report(s: Any, cfg: Any) -> dict[str, Any]:
    """The plan as a table and as data; memory columns come from the analytic model."""
    plan, p, t = s.plan, cfg.pipeline, cfg.train
    data = plan_dict(plan, cfg)
    B, M, K = t.batch_size, p.microbatches, plan.k
    mb = max(r.stop - r.start for r in split_batch(B, M))
    itemsize = np.dtype(t.dtype).itemsize
    actions = sch.make(p.schedule, K, M)
    # stage time = the plan's layer costs (FLOPs or measured), split F/B in the FLOP ratio
    layers = plan.graph.layers
    cost = [sum(plan.layer_costs[layers.index(x)] for x in st.layers) for st in plan.stages]
    share = [st.flops_fwd / max(1, st.flops_fwd + st.flops_bwd) for st in plan.stages]
    fwd = [c * s for c, s in zip(cost, share, strict=True)]
    bwd = [c * (1 - s) for c, s in zip(cost, share, strict=True)]
    tl = sch.simulate(actions, fwd, bwd)
    basis = "measured" if "measured" in plan.strategy else "FLOP-proportional"
    mem = predict(plan, **memory_kwargs(cfg), channels=uses_channels(cfg))
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
    text = (
        f"plan: {K} stage(s), strategy {plan.strategy}, schedule {p.schedule}, batch {B} "
        f"in {M} micro-batch(es) of <= {mb} rows, {t.dtype}\n"
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
