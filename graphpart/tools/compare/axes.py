"""Does the 2-D strategy (R replicas of a K-stage pipeline) beat either axis alone? One line
of the conclusion, from the comparison's own rows (`Comparison.row` dicts), pure."""

from __future__ import annotations

from typing import Any

from graphpart.tools.compare.verdict import TIE, family, setup_name, speed
from graphpart.units import human_bytes

AXES = (("partition", "pipeline only"), ("data parallel", "data parallel only"))


def _ran(r: dict[str, Any]) -> bool:
    return r.get("status") == "ran" and bool(r.get("samples_per_s"))


def _figures(r: dict[str, Any], projected: bool) -> str:
    """Speed, per-device memory (predicted, the OS's measurement) and bytes sent a step."""
    text = f"{speed(r, projected):,.0f} samples/s, {human_bytes(r['predicted_peak'])} per device"
    if r.get("measured_peak") is not None:
        text += f" ({human_bytes(r['measured_peak'])} measured by the OS)"
    return text + f", {human_bytes(int(r.get('comm_bytes_per_step') or 0))} sent a step"


def _against(
    h: dict[str, Any], rival: dict[str, Any] | None, what: str, projected: bool
) -> tuple[str, bool | None]:
    """The comparison of h with the best of one axis, and whether h beats it (None: no
    figures to judge by)."""
    if rival is None:
        return f"{what}: no setup of it ran", None
    name = f"{what}, {setup_name(rival)}"
    if rival["status"] == "does not fit":
        return (
            f"{name} does not fit ({human_bytes(rival['predicted_peak'])} per device "
            "predicted) where h does: h beats it",
            True,
        )
    if not _ran(rival):
        return f"{name} {rival['status']}: no figures", None
    a, b = speed(h, projected), speed(rival, projected)
    mem = h["predicted_peak"] / rival["predicted_peak"] if rival["predicted_peak"] else 0.0
    sent = rival.get("comm_bytes_per_step") or 0
    text = (
        f"{name}: {_figures(rival, projected)}; h runs {a / b:.2f}x its speed with "
        f"{mem:.2f}x its memory per device"
        + (f" and {(h.get('comm_bytes_per_step') or 0) / sent:.2f}x its bytes sent" if sent else "")
    )
    if b < (1 - TIE) * a:
        return text + ": h beats it", True
    if a < (1 - TIE) * b:
        return text + ": it beats h", False
    return text + f": within {TIE:.0%}, a tie (the simpler one wins)", False


def axes_line(rows: dict[str, dict[str, Any]], *, devices: int, cores: int) -> str | None:
    """ "2-D against either axis alone": strategy h's samples/s, per-device memory and bytes
    sent a step against the fastest pipeline-only setup that ran (d, e, g, or plan --auto's
    pick if it is one) and data parallel only (f), and whether 2-D beats each: faster by
    more than TIE, or it fits where that axis does not. Speeds are measured, or projected
    with a device each where this machine has fewer cores than `devices` (as the verdict
    compares them). None without a strategy h."""
    h = rows.get("h")
    if h is None:
        return None
    projected = cores < devices
    basis = "projected with a device each" if projected else "measured"
    if h["status"] == "does not fit":
        return (
            f"2-D (h) does not fit: {setup_name(h)} needs {human_bytes(h['predicted_peak'])} "
            "per device predicted, so it beats neither axis alone here."
        )
    if not _ran(h):
        return (
            f"2-D (h) {h['status']}"
            + (f" ({h['problem']})" if h.get("problem") else "")
            + (": no figures to set it against either axis alone.")
        )
    parts, beats = [], []
    for fam, what in AXES:
        pool = [r for r in rows.values() if r is not h and family(r) == fam]
        ran = [r for r in pool if _ran(r)]
        if ran:
            rival: dict[str, Any] | None = max(ran, key=lambda r: speed(r, projected))
        else:
            over = [r for r in pool if r["status"] == "does not fit"]
            rival = min(over, key=lambda r: r["predicted_peak"]) if over else None
        text, won = _against(h, rival, what, projected)
        parts.append(text)
        beats.append((what, won))
    won = [w for w, b in beats if b]
    lost = [w for w, b in beats if b is False]
    if len(won) == len(AXES):
        so = "2-D beats both axes alone here"
    elif won:
        so = f"2-D beats {won[0]} but not {' or '.join(lost) or 'the other (no figures)'} here"
    elif lost:
        so = "2-D beats neither axis alone here"
    else:
        so = "there is nothing to set 2-D against here"
    return (
        f"2-D against either axis alone (samples/s {basis}): {setup_name(h)} on "
        f"{h['devices']} devices: {_figures(h, projected)}. Against {'; against '.join(parts)}. "
        f"So {so}."
    )
