"""The text `graphpart hessian` prints, from its figures."""

from __future__ import annotations

from typing import Any

from graphpart.units import human_bytes, table


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def text_report(f: dict[str, Any]) -> str:
    m = f["model"]
    sizes = "-".join(str(x) for x in m["sizes"])
    shapes = ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in m["shapes"].items())
    lines = [
        f"hessian: {m['data']}, MLP {sizes} ({m['activation']}, "
        f"{'bias' if m['bias'] else 'no bias'}, {m['loss']}, weight decay {m['weight_decay']:g}), "
        f"{m['dtype']}",
        f"H = d2J/dW2 over {m['parameters']:,} parameters ({shapes})",
        f"at the initial parameters (seed {m['seed']}), on {m['samples']:,} training samples",
        "",
    ]
    dense, lz, pw = f["dense"], f["lanczos"], f["power"]
    head = ["k"]
    if dense:
        head.append(f"dense ({dense['hvps']:,} HVPs)")
    head.append(f"Lanczos ({lz['hvps']} HVPs)")
    if pw["top"]:
        head.append(f"power iteration ({pw['hvps']} HVPs)")
    rows = []
    for k in range(len(lz["top"])):
        row: list[Any] = [k + 1]
        if dense:
            row.append(f"{dense['top'][k]:.6g}" if k < len(dense["top"]) else "")
        row.append(f"{lz['top'][k]:.6g}")
        if pw["top"]:
            row.append(f"{pw['top'][k]:.6g}" if k < len(pw["top"]) else "")
        rows.append(row)
    lines.append("largest eigenvalues of H")
    lines.append(table(head, rows))
    if dense:
        lines.append(
            f"dense: smallest eigenvalue {dense['smallest']:.4g}, {dense['negative']} negative of "
            f"{m['parameters']:,}, trace {dense['trace']:.6g}"
        )
    else:
        lines.append("dense: skipped (more parameters than --dense-max)")
    c = f["checks"]
    lines += [
        "",
        f"checks: symmetry |u'Hv - v'Hu| / |u'Hv| = {c['symmetry']:.1e}; central differences of "
        f"the gradient (eps {c['fd_eps']:g}) vs Hv: relative error {c['finite_differences']:.1e}",
    ]
    if "pipelined" in c:
        pp = c["pipelined"]
        lines.append(
            f"pipelined HVP ({pp['stages']} stages, {pp['microbatches']} micro-batches, "
            f"{pp['schedule']}) vs one process: max relative difference {pp['max_rel_diff']:.1e}"
        )
    t = f["cost"]
    lines += [
        "",
        f"one HVP against one gradient (same model and batch; time: median of {t['repeats']})",
        table(
            ["", "gradient", "HVP", "HVP / gradient"],
            [
                ["time", _ms(t["grad_s"]), _ms(t["hvp_s"]), f"{t['ratio']:.2f} x time"],
                [
                    "matmul FLOPs",
                    f"{t['grad_flops']:,}",
                    f"{t['hvp_flops']:,}",
                    f"{t['hvp_flops'] / t['grad_flops']:.2f}",
                ],
                [
                    "kept for backward",
                    human_bytes(t["grad_kept"]),
                    human_bytes(t["hvp_kept"]),
                    f"{t['hvp_kept'] / t['grad_kept']:.2f}",
                ],
            ],
        ),
    ]
    return "\n".join(lines)
