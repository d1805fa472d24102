"""The verdict of a comparison: which answer (one device, accumulation, a smaller minibatch,
partition, data parallel) wins for this model and budget, and the figures behind it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graphpart.tools.compare.results import Comparison, state_bytes
from graphpart.units import human_bytes

TIE = 0.10  # speeds within 10% of the fastest are a tie: the simpler setup is named
# the simpler setup first: what a tie is settled by
FAMILIES = (
    "one device",
    "accumulation",
    "smaller minibatch",
    "partition",
    "data parallel",
    "2-D",
)


@dataclass(frozen=True)
class Verdict:
    """The answer for this model and budget: one sentence, then the figures behind it."""

    answer: str  # "one device" | "accumulation" | "smaller minibatch" | "partition" |
    # "data parallel" | "2-D" | "nothing fits" | "no verdict"
    headline: str
    figures: list[str] = field(default_factory=list)
    pick: str | None = None  # the key of the strategy it names, if any
    ratio: float | None = None  # the pick's samples/s over the best of the other answer

    def text(self) -> str:
        """The report's first paragraph: the headline, then the figures."""
        return self.headline + (f" Figures: {'; '.join(self.figures)}." if self.figures else "")


def family(r: dict[str, Any]) -> str:
    """Which answer a strategy row stands for, from its config overrides (so plan --auto's
    pick counts as what it is): 2-D (replicas of a pipeline), partition, data parallel,
    smaller minibatch, accumulation, or one device."""
    cfg = r.get("config") or {}
    if int(cfg.get("pipeline.stages", 1)) > 1 and int(cfg.get("pipeline.data_parallel", 1)) > 1:
        return "2-D"
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
    elif f == "2-D":
        sched = {"gpipe": "GPipe", "1f1b": "1F1B"}.get(str(cfg.get("pipeline.schedule")), "1F1B")
        what = (
            f"2-D, {cfg['pipeline.data_parallel']} replicas x {cfg['pipeline.stages']}-stage "
            f"{sched}{' + recompute' if cfg.get('pipeline.recompute') else ''}, "
            f"M={cfg.get('pipeline.microbatches', 1)}"
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


def speed(r: dict[str, Any], projected: bool) -> float:
    """A row's samples/s: projected with a device each (where `projected` and known), else
    measured."""
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

    top = max(speed(r, projected) for r in ran)
    tied = [r for r in ran if speed(r, projected) >= (1 - TIE) * top]
    pick = min(tied, key=lambda r: (FAMILIES.index(family(r)), _peak(r)))
    fam = family(pick)
    fits = {family(r) for r in ran}

    def best(*fams: str) -> dict[str, Any] | None:
        pool = [r for r in ran if family(r) in fams and r is not pick]
        return max(pool, key=lambda r: speed(r, projected)) if pool else None

    def blocked(*fams: str) -> dict[str, Any] | None:
        pool = [r for r in over if family(r) in fams]
        return min(pool, key=_peak) if pool else None

    one_device = ("one device", "accumulation", "smaller minibatch")
    if fam in one_device:
        rival = best("partition")
    elif fam == "2-D":  # against either axis alone
        rival = best("partition", "data parallel")
    else:
        rival = best(*one_device)
    rival = rival or best(*(f for f in FAMILIES if f != fam))
    ratio = speed(pick, projected) / speed(rival, projected) if rival else None
    fit_word = f"fits{per}" if budget is not None else "fits (no budget given)"
    if fam == "one device":
        head = f"Train on one device: it {fit_word} and is the fastest"
        if rival:
            what = "partitioning" if family(rival) == "partition" else setup_name(rival)
            head += f"; {_cost(what, ratio, basis)}"
            if not projected and rival["devices"] > 1 and rival.get("projected_samples_per_s"):
                head += (
                    f"; {speed(pick, True) / speed(rival, True):.1f}x with a device per "
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
        elif fam == "2-D":
            head = f"Replicate a pipeline: {name} {fit_word} and is the fastest"
        else:
            head = f"Replicate: {name} {fit_word} and is the fastest"
        if rival and (not only or fam == "2-D"):
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
