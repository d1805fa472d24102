"""The plan report of a schedule with virtual stages: stages by device and chunk, the schedule
drawn, the bubble, and each device's predicted memory (its chunks' sum)."""

from __future__ import annotations

from typing import Any

from graphpart.plan.batching import microbatch_rows, split_batch
from graphpart.plan.kinds import chunks_for
from graphpart.plan.kinds import make as make_schedule
from graphpart.plan.memory import budget_problem
from graphpart.plan.schedule import peak_in_flight
from graphpart.plan.virtual import format_schedule
from graphpart.plan.virtual_memory import chunk_memory
from graphpart.plan.virtual_sim import draw, simulate
from graphpart.run.config import Config
from graphpart.run.setup import Setup, budget_of, predicted_memory, uses_channels
from graphpart.units import human_bytes, table

WIDTH = 72  # columns of the drawn schedule


def virtual_plan_report(s: Setup, cfg: Config, data: dict[str, Any]) -> dict[str, Any]:
    """`plan_report` for interleaved and zbv: `data` is plan_dict's, extended here."""
    plan, p, t = s.plan, cfg.pipeline, cfg.train
    v = chunks_for(p.schedule, p.chunks)
    K, B, M = plan.k // v, t.batch_size, p.microbatches
    mb = max(r.stop - r.start for r in split_batch(B, M))
    where, actions = make_schedule(p.schedule, K, v, M)
    layers = plan.graph.layers
    cost = [sum(plan.layer_costs[layers.index(x)] for x in st.layers) for st in plan.stages]
    share = [st.flops_fwd / max(1, st.flops_fwd + st.flops_bwd) for st in plan.stages]
    fwd = [c * f for c, f in zip(cost, share, strict=True)]
    bwd = [c * (1 - f) for c, f in zip(cost, share, strict=True)]
    tl = simulate(actions, where, fwd, bwd)
    basis = "measured" if "measured" in plan.strategy else "FLOP-proportional"
    mem = predicted_memory(s)
    chunks = chunk_memory(plan, s.workload, channels=uses_channels(cfg))
    rows = [
        [
            st.index,
            where.owner[st.index],
            where.chunk(st.index),
            ",".join(map(str, st.layers)),
            " ".join(st.params),
            chunks[st.index].in_flight,
            human_bytes(chunks[st.index].total),
        ]
        for st in plan.stages
    ]
    headers = ["stage", "device", "chunk", "layers", "params", "slots", "peak memory"]
    devices = [
        [d, " ".join(map(str, where.stages_of(d))), peak_in_flight(actions[d]),
         human_bytes(mem.stages[d].total)]
        for d in range(K)
    ]  # fmt: skip
    budget = budget_of(cfg)
    problem = budget_problem(mem, budget) if budget is not None else None
    data.update(
        {
            "batch": B,
            "data_parallel": 1,
            "microbatches": M,
            "schedule": p.schedule,
            "chunks": v,
            "placement": where.name,
            "owner": list(where.owner),
            "actions": format_schedule(actions).splitlines(),
            "predicted_bubble": tl.bubble,
            "peak_in_flight": list(tl.peak_in_flight),
            "memory": mem.to_dict(),
        }
    )
    if budget is not None:
        data["memory_budget"] = {"bytes": budget, "fits": not problem, "problem": problem}
    text = (
        f"plan: {K} device(s) x {v} chunk(s) = {plan.k} virtual stages ({where.name} "
        f"placement), strategy {plan.strategy}, schedule {p.schedule}, batch {B} in {M} "
        f"micro-batch(es) of <= {mb} rows ({microbatch_rows(B, M)} a buffer), {t.dtype}\n"
        + table(headers, rows)
        + "\n"
        + table(["device", "virtual stages", "in-flight", "peak memory"], devices)
        + f"\npredicted bubble ({basis} virtual-stage times): {tl.bubble:.1%}\n"
        + draw(tl, WIDTH / tl.makespan if tl.makespan > 0 else 1.0)
        + "\nlegend: 0-9 F of micro-batch m mod 10, a-j its B (or I), A-J its W, . idle; "
        "the row below a device: each action's chunk\n"
        + mem.table()
        + (
            ""
            if budget is None
            else f"\nmemory budget {p.memory_budget}: "
            + (
                f"the plan {problem}; `graphpart train` would refuse it"
                if problem
                else "every device's predicted peak fits"
            )
        )
    )
    return {"text": text, "data": data}
