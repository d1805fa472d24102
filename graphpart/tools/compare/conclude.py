"""The written conclusion of a comparison, derived from its own figures (nothing canned)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from graphpart.ir import mlp
from graphpart.plan.memory import predict
from graphpart.plan.partition import partition
from graphpart.run.config import Config
from graphpart.run.setup import workload_of
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


TIE = 0.10  # speeds within 10% of the fastest are a tie: the simpler setup is named
# the simpler setup first: what a tie is settled by
FAMILIES = ("one device", "accumulation", "smaller minibatch", "partition", "data parallel")


@dataclass(frozen=True)
class Verdict:
    """The answer for this model and budget: one sentence, then the figures behind it."""

    answer: str  # "one device" | "accumulation" | "smaller minibatch" | "partition" |
    # "data parallel" | "nothing fits" | "no verdict"
    headline: str
    figures: list[str] = field(default_factory=list)
    pick: str | None = None  # the key of the strategy it names, if any
    ratio: float | None = None  # the pick's samples/s over the best of the other answer

    def text(self) -> str:
        """The report's first paragraph: the headline, then the figures."""
        return self.headline + (f" Figures: {'; '.join(self.figures)}." if self.figures else "")


def family(r: dict[str, Any]) -> str:
    """Which answer a strategy row stands for, from its config overrides (so plan --auto's
    pick counts as what it is): partition, data parallel, smaller minibatch, accumulation,
    or one device."""
    cfg = r.get("config") or {}
    if int(cfg.get("pipeline.stages", 1)) > 1:
        return "partition"
    if int(cfg.get("pipeline.data_parallel", 1)) > 1:
        return "data parallel"
    if "train.batch_size" in cfg:
        return "smaller minibatch"
    if int(cfg.get("pipeline.microbatches", 1)) > 1:
        return "accumulation"
    return "one device"


def setup_name(r: dict[str, Any]) -> str:
    """A strategy as a user would name it: "1F1B, K=4, M=8 (e)", "accumulation, M=2 (c)"."""
    cfg, f = r.get("config") or {}, family(r)
    if f == "partition":
        sched = {"gpipe": "GPipe", "1f1b": "1F1B"}.get(str(cfg.get("pipeline.schedule")), "1F1B")
        what = (
            f"{sched}{' + recompute' if cfg.get('pipeline.recompute') else ''}, "
            f"K={cfg['pipeline.stages']}, M={cfg.get('pipeline.microbatches', 1)}"
        )
    elif f == "data parallel":
        what = f"data parallel, {cfg['pipeline.data_parallel']} replicas"
    elif f == "smaller minibatch":
        what = f"smaller minibatch of {cfg['train.batch_size']} rows"
    elif f == "accumulation":
        what = f"accumulation, {cfg['pipeline.microbatches']} micro-batches"
    else:
        what = "one device"
    return f"{what} ({'plan --auto' if r['key'] == 'auto' else r['key']})"


def _speed(r: dict[str, Any], projected: bool) -> float:
    if projected and r.get("projected_samples_per_s"):
        return float(r["projected_samples_per_s"])
    return float(r.get("samples_per_s") or 0.0)


def _mem(r: dict[str, Any], budget: int | None) -> str:
    """Per-device memory: predicted (what the budget is checked against) and, if it ran, the
    OS's measurement; says when the OS saw more than the budget."""
    text = f"{human_bytes(r['predicted_peak'])} per device predicted"
    if r.get("measured_peak") is not None:
        text += f", {human_bytes(r['measured_peak'])} measured by the OS"
        if r.get("devices", 1) == 1 and r["measured_peak"] < r["predicted_peak"] / 2:
            text += " (in process: the OS counts only growth past what compare already held)"
        if budget is not None and r["measured_peak"] > budget:
            text += " (above the budget, which is checked against the prediction)"
    return text


def _figure(r: dict[str, Any], budget: int | None, projected: bool) -> str:
    """One strategy's supporting figures: memory, and speed if it ran."""
    if r["status"] == "does not fit":
        return f"{setup_name(r)} needs {human_bytes(r['predicted_peak'])} predicted: does not fit"
    if r["status"] != "ran" or not r.get("samples_per_s"):
        return f"{setup_name(r)} {r['status']}" + (f" ({r['problem']})" if r.get("problem") else "")
    line = f"{setup_name(r)} {_mem(r, budget)}, {r['samples_per_s']:,.0f} samples/s measured"
    if r.get("devices", 1) > 1 and r.get("projected_samples_per_s"):
        line += f" ({r['projected_samples_per_s']:,.0f} projected with a device each)"
    return line


def verdict(rows: list[dict[str, Any]], *, devices: int, cores: int, budget: int | None) -> Verdict:
    """Partition the model across devices, or train on a smaller minibatch? The answer from
    the comparison's rows (`Comparison.row` dicts), pure.

    A strategy fits if it ran (its predicted peak was within the budget, or there was none).
    Among those that fit, the fastest wins; within TIE of the fastest the simpler one (order
    of FAMILIES) is named. Speed is samples/s measured on this machine, or, where the machine
    has fewer cores than `devices` (the stages would share them), the projection with a
    device each, and the headline says which. The headline names the answer and the ratio to
    the best of the other answer; the figures give each deciding strategy's per-device memory
    (predicted, and the OS's measurement) and samples/s.
    """
    projected = cores < devices
    basis = "projected with a device each" if projected else "measured"
    ran = [r for r in rows if r["status"] == "ran" and r.get("samples_per_s")]
    over = [r for r in rows if r["status"] == "does not fit"]
    per = f" {human_bytes(budget)} per device" if budget is not None else ""
    if not ran:
        if over:
            least = min(over, key=lambda r: r["predicted_peak"])
            return Verdict(
                "nothing fits",
                f"Nothing fits{per}: neither partitioning nor a smaller minibatch; the least "
                f"any setup needs is {human_bytes(least['predicted_peak'])} per device "
                f"({setup_name(least)}, predicted). Raise the budget to that, use more "
                "devices, or lower the batch size.",
                [_figure(r, budget, projected) for r in sorted(over, key=_peak)],
            )
        return Verdict(
            "no verdict",
            "No verdict: no strategy finished a run.",
            [_figure(r, budget, projected) for r in rows],
        )

    top = max(_speed(r, projected) for r in ran)
    tied = [r for r in ran if _speed(r, projected) >= (1 - TIE) * top]
    pick = min(tied, key=lambda r: (FAMILIES.index(family(r)), _peak(r)))
    fam = family(pick)
    fits = {family(r) for r in ran}

    def best(*fams: str) -> dict[str, Any] | None:
        pool = [r for r in ran if family(r) in fams and r is not pick]
        return max(pool, key=lambda r: _speed(r, projected)) if pool else None

    def blocked(*fams: str) -> dict[str, Any] | None:
        pool = [r for r in over if family(r) in fams]
        return min(pool, key=_peak) if pool else None

    one_device = ("one device", "accumulation", "smaller minibatch")
    rival = best("partition") if fam in one_device else best(*one_device)
    rival = rival or best(*(f for f in FAMILIES if f != fam))
    ratio = _speed(pick, projected) / _speed(rival, projected) if rival else None
    fit_word = f"fits{per}" if budget is not None else "fits (no budget given)"
    if fam == "one device":
        head = f"Train on one device: it {fit_word} and is the fastest"
        if rival:
            what = "partitioning" if family(rival) == "partition" else setup_name(rival)
            head += f"; {_cost(what, ratio, basis)}"
            if not projected and rival["devices"] > 1 and rival.get("projected_samples_per_s"):
                head += (
                    f"; {_speed(pick, True) / _speed(rival, True):.1f}x with a device per "
                    "stage (projected)"
                )
        head += "."
    elif fam in ("accumulation", "smaller minibatch"):
        a = blocked("one device")
        head = (
            "Train on a smaller minibatch on one device: "
            + (
                f"the full minibatch does not fit{per} ({human_bytes(a['predicted_peak'])} "
                "predicted), "
                if a
                else ""
            )
            + f"{setup_name(pick)} fits and is the fastest"
            + (
                " (the same gradient as the full minibatch)"
                if fam == "accumulation"
                else " (more, noisier steps: retune the learning rate)"
            )
        )
        if rival and family(rival) == "partition":
            head += f"; partitioning also fits: {_cost('it', ratio, basis)}"
        elif "partition" not in fits and blocked("partition"):
            head += "; partitioning does not fit"
        head += "."
    else:
        name = setup_name(pick)
        only = not (fits & set(one_device))
        if fam == "partition" and only:
            head = f"Only partitioning fits{per}: {name}"
        elif fam == "partition":
            head = f"Partition: {name} {fit_word} and is the fastest"
        else:
            head = f"Replicate: {name} {fit_word} and is the fastest"
        if rival and not only:
            head += f", {ratio:.2f}x the speed of {setup_name(rival)} ({basis})"
        elif only and (a := blocked(*one_device)):
            head += (
                f"; one device needs at least {human_bytes(a['predicted_peak'])} in any form "
                f"({setup_name(a)}, predicted)"
            )
            if a.get("predicted_memory"):
                head += (
                    f", of which {human_bytes(state_bytes(a['predicted_memory'][0]))} is "
                    "parameters, gradients and optimizer state, which no smaller minibatch "
                    "divides"
                )
        head += "."
    shown = [pick] + [r for r in (rival,) if r]
    shown += [r for r in (blocked("one device"),) if r and r not in shown]
    figures = [_figure(r, budget, projected) for r in shown]
    if projected:
        figures.append(
            f"this machine has {cores} core(s) for {devices} devices, so speeds are compared "
            "as projected with a device each"
        )
    return Verdict(fam, head, figures, pick["key"], ratio)


def comparison_verdict(c: Comparison) -> Verdict:
    """`verdict` of a finished comparison."""
    return verdict(
        [c.row(o) for o in c.outcomes], devices=c.devices, cores=c.cores, budget=c.budget
    )


def _cost(what: str, ratio: float | None, basis: str) -> str:
    """ "partitioning costs 10.3x in time here (measured)", or, inside the tie, that it is
    as fast or a little faster."""
    if ratio is None:
        return ""
    if ratio >= 1:
        return f"{what} costs {ratio:.1f}x in time here ({basis})"
    return (
        f"{what} is {1 / ratio:.2f}x as fast ({basis}), within the {TIE:.0%} counted as a tie, "
        "so the simpler setup is named"
    )


def _peak(r: dict[str, Any]) -> int:
    return int(r.get("predicted_peak") or 0)


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

    # convergence
    same = [r for r in ran if r["key"] in ("a", "c", "d", "e", "f", "g", "auto")]
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
