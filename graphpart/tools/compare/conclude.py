"""The written conclusion of a comparison, derived from its own figures (nothing canned)."""

from __future__ import annotations

from dataclasses import replace

from graphpart.ir import mlp
from graphpart.plan.memory import predict
from graphpart.plan.partition import partition
from graphpart.run.config import Config
from graphpart.run.setup import workload_of
from graphpart.tools.compare.axes import axes_line
from graphpart.tools.compare.results import Comparison, state_bytes
from graphpart.units import human_bytes


def _memory(r: dict | None) -> list[dict[str, int]]:
    """A strategy's per-device bytes by category: the workers' ledger if it ran (the OS
    measures totals, not categories), else predicted."""
    if not r:
        return []
    return r["ledger_memory"] or r["predicted_memory"]


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def crossover_batch(cfg: Config, n_in: int, n_out: int, width_factor: int = 1) -> float:
    """Rows per step above which one device's activations outweigh its parameter state
    (parameters + gradients + optimizer) for this model, from the memory model."""
    m = cfg.model
    g = mlp(
        [n_in, *(h * width_factor for h in m.hidden), n_out],
        activation=m.activation,
        bias=m.bias,
        loss=m.loss,
        weight_decay=m.weight_decay,
    )
    plan = partition(g, 1)
    w = replace(workload_of(cfg), microbatches=1, recompute=False)
    one, two = (predict(plan, replace(w, batch=b)).stages[0].bytes for b in (64, 128))
    per_row = (one["activation"] - two["activation"]) / (64 - 128)
    return state_bytes(one) / per_row if per_row > 0 else float("inf")


def _budget_line(c: Comparison, rows: dict[str, dict]) -> str:
    """Which strategies a per-device budget admits, from the predicted peaks."""
    peaks = sorted(
        (r for r in rows.values() if r.get("predicted_peak")), key=lambda r: r["predicted_peak"]
    )
    if not peaks:
        return "Budget: no strategy could be predicted."
    steps = ", ".join(f"{r['key']} {human_bytes(r['predicted_peak'])}" for r in peaks)
    line = f"Budget: the predicted largest-device peaks are {steps}"
    one = [r for r in peaks if r["devices"] == 1 and r["key"] != "b"]
    split = [
        r for r in peaks if r["predicted_peak"] < min((x["predicted_peak"] for x in one), default=0)
    ]
    if one and split:
        lo = min(x["predicted_peak"] for x in one)
        line += (
            f"; below {human_bytes(lo)} per device the full minibatch fits one device in no "
            f"form, and only {', '.join(r['key'] for r in split)} remain, down to "
            f"{human_bytes(peaks[0]['predicted_peak'])}"
        )
    if c.budget is not None:
        over = [r["key"] for r in peaks if r["predicted_peak"] > c.budget]
        line += f"; under this run's {human_bytes(c.budget)} budget " + (
            f"{', '.join(over)} did not fit and were not run" if over else "everything fits"
        )
    return line + "."


def conclusion(c: Comparison, n_in: int, n_out: int) -> list[str]:
    """Bullet points: who wins on memory, speed and convergence, and when that flips."""
    rows = {r["key"]: r for r in (c.row(o) for o in c.outcomes)}
    ran = [r for r in rows.values() if r["status"] == "ran" and r.get("steps")]
    out: list[str] = []
    if not ran:
        return ["No strategy ran, so there is nothing to conclude from measurements."]
    K, B = c.devices, c.base.train.batch_size

    # memory
    best = min(ran, key=lambda r: r["predicted_peak"])
    ref = rows.get("a")
    line = (
        f"Memory: {best['key']}. {best['name']} has the smallest largest-device peak, "
        f"{human_bytes(best['predicted_peak'])} predicted"
        + (
            f" ({human_bytes(best['measured_peak'])} measured: the resident growth of its "
            "worker process, as the OS counts it)"
            if best.get("measured_peak") is not None
            else ""
        )
    )
    a_mem = _memory(ref)
    if ref and a_mem:
        a = a_mem[0]
        how = " by its ledger" if ref["ledger_memory"] else ", predicted: it did not run"
        line += (
            f", {_x(best['predicted_peak'], a['total'])} of one device's "
            f"{human_bytes(a['total'])}{how}"
        )
        parts = []
        for k in ("d", "e", "g"):
            r = rows.get(k)
            if r and _memory(r):
                worst = max(state_bytes(d) for d in _memory(r))
                parts.append(f"{k}: {_x(worst, state_bytes(a))}")
        if parts:
            line += (
                f". Parameter+gradient+optimizer bytes on the fullest pipeline stage, against "
                f"one device's {human_bytes(state_bytes(a))}: "
                + ", ".join(parts)
                + f" (1/K = {1 / K:.2f}; the rest is layer imbalance)"
            )
        for k, what in (("b", "a smaller minibatch"), ("f", "each data-parallel replica")):
            r = rows.get(k)
            if r and _memory(r):
                d = max(_memory(r), key=lambda m: m["total"])
                line += (
                    f"; {what} keeps {_x(state_bytes(d), state_bytes(a))} of the state and "
                    f"{_x(d['activation'], a['activation'])} of the activations"
                    + ("" if r["ledger_memory"] else " (predicted)")
                )
    out.append(line + ".")

    # speed
    fast = max(ran, key=lambda r: r["samples_per_s"])
    proj = [r for r in ran if r.get("projected_samples_per_s")]
    pfast = max(proj, key=lambda r: r["projected_samples_per_s"]) if proj else None
    line = (
        f"Speed on this machine ({c.threads} core(s) per device): {fast['key']}. {fast['name']} "
        f"is fastest at {fast['samples_per_s']:,.0f} samples/s"
    )
    if ref and ref.get("samples_per_s") and fast is not ref:
        line += f" ({_x(fast['samples_per_s'], ref['samples_per_s'])} of one device)"
    if pfast:
        line += (
            f"; with a device of its own per stage or replica, the simulator fed the measured "
            f"times puts {pfast['key']}. {pfast['name']} first at "
            f"{pfast['projected_samples_per_s']:,.0f} samples/s"
        )
        if ref and ref.get("samples_per_s") and pfast is not ref:
            line += f" ({_x(pfast['projected_samples_per_s'], ref['samples_per_s'])} of one device)"
        rest = sorted(
            (r for r in proj if r is not pfast),
            key=lambda r: -r["projected_samples_per_s"],
        )
        if rest:
            line += "; then " + ", ".join(
                f"{r['key']} {r['projected_samples_per_s']:,.0f}" for r in rest
            )
    out.append(line + ".")
    grid = axes_line(rows, devices=c.devices, cores=c.cores)
    if grid:
        out.append(grid)

    # convergence
    same = [r for r in ran if r["key"] in ("a", "c", "d", "e", "f", "g", "h", "auto")]
    if len(same) > 1:
        losses = [r["final_train_loss"] for r in same]
        line = (
            f"Convergence: {', '.join(r['key'] for r in same)} compute the same gradient of the "
            f"same minibatch, and end {len(same[0]['curve'])} epochs at train loss "
            f"{min(losses):.6g}..{max(losses):.6g}: they differ in memory and time, not in "
            "mathematics"
        )
        if c.base.train.dtype != "float64" and max(losses) > min(losses):
            line += (
                f" (the spread is {c.base.train.dtype} rounding: the sums run in another order; "
                "in float64 they agree to 1e-10, which the tests hold)"
            )
        out.append(line + ".")
    b = rows.get("b")
    if b and b.get("steps") and ref and ref.get("steps"):
        metric = c.metric.replace("_", " ")
        key = "final_" + c.metric
        out.append(
            f"A smaller minibatch (b) takes {_x(b['steps'], ref['steps'])} as many steps per epoch "
            f"and ends at {metric} {b[key]:.4g} against {ref[key]:.4g} for a, with the learning "
            f"rate scaled by the {c.lr_rule} rule."
        )
    if c.target is not None:
        hit = [r for r in ran if r.get("time_to_target_s") is not None]
        if hit:
            first = min(hit, key=lambda r: r["time_to_target_s"])
            missed = [r["key"] for r in ran if r.get("time_to_target_s") is None]
            out.append(
                f"Time to {c.metric.replace('_', ' ')} {c.target:g}: {first['key']}. "
                f"{first['name']} first, after {first['time_to_target_s']:.2f} s of training "
                f"(epoch {first['epochs_to_target']})"
                + (f"; not reached by {', '.join(missed)}" if missed else "")
                + "."
            )

    auto = rows.get("auto")
    if auto and auto.get("steps") and auto.get("auto_predicted_samples_per_s"):
        pred_rate, pred_peak = auto["auto_predicted_samples_per_s"], auto["auto_predicted_peak"]
        out.append(
            f"plan --auto's pick ({auto['title']}) was predicted at {pred_rate:,.0f} samples/s "
            f"and {human_bytes(pred_peak)} on its largest device; it measured "
            f"{human_bytes(auto['measured_peak'])} ({_x(auto['measured_peak'], pred_peak)}) and "
            f"{auto['samples_per_s']:,.0f} samples/s here ({_x(auto['samples_per_s'], pred_rate)}"
            f"), {auto['projected_samples_per_s']:,.0f} projected with a device per stage "
            f"({_x(auto['projected_samples_per_s'], pred_rate)})"
            + (
                f"; this machine has {c.cores} core(s) for {auto['devices']} devices, so the "
                "measured speed shares cores and only the projection is comparable"
                if auto["devices"] > c.cores
                else ""
            )
            + "."
        )

    # when the answer flips
    bstar = crossover_batch(c.base, n_in, n_out)
    bstar2 = crossover_batch(c.base, n_in, n_out, 2)
    if ref and a_mem:
        a = a_mem[0]
        share = a["activation"] / a["total"] if a["total"] else 0.0
        out.append(
            f"Batch and width: at B={B} activations are {share:.0%} of one device's peak; "
            f"they outweigh the parameter state above B*={bstar:,.0f} rows for this model "
            f"(B*={bstar2:,.0f} at twice the width). Below B* partitioning (which divides the "
            "state) saves more per device; above it a smaller minibatch or recomputation "
            "(which divide the activations) does."
        )
    out.append(_budget_line(c, rows))
    M = c.microbatches
    bub = (K - 1) / (M + K - 1)
    bub2 = (2 * K - 1) / (M + 2 * K - 1)
    f = rows.get("f")
    line = (
        f"Devices: with M={M} micro-batches the textbook bubble (K-1)/(M+K-1) is {bub:.0%} at "
        f"K={K} and would be {bub2:.0%} at K={2 * K} (more micro-batches shrink it)"
    )
    sim = [r["bubble"] for r in ran if r.get("bubble") is not None]
    if sim:
        line += (
            f"; fed this model's measured stage times and hop, the simulator puts it at "
            f"{min(sim):.0%}..{max(sim):.0%}: the hops and the unequal stages add to it"
        )
    if f and f.get("steps"):
        stats = next(o for o in c.outcomes if o.strategy.key == "f").summary["stage_stats"]
        ar = max(x["allreduce_s"] for x in stats) / f["steps"]
        line += (
            f"; data parallelism spends {ar * 1e3:.2f} ms a step in the all-reduce "
            f"({ar / f['step_s']:.0%} of its step), a cost that grows with the parameter bytes "
            "and not with the batch"
        )
    out.append(line + ".")
    return out
