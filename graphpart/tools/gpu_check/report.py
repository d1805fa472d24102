"""The check's one summary, as text: device, verdict, then each section's figures."""

from __future__ import annotations

from typing import Any


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_summary(r: dict[str, Any]) -> str:
    """The report as lines of text (what tools/gpu-check prints at the end)."""
    dev = r.get("device", {})
    lines = [
        f"gpu-check {r['date']}  ({r['elapsed_s']:.0f} s"
        + ("" if r.get("within_budget") else ", OVER the 5-minute budget")
        + ")",
        f"device: {dev.get('name', '?')}"
        + (f", cc {dev['compute_capability']}" if dev.get("compute_capability") else "")
        + (f", {dev['memory_total_gib']:.0f} GiB" if dev.get("memory_total_gib") else "")
        + f"; numba {dev.get('numba')}, numba-cuda {dev.get('numba_cuda') or 'not installed'}",
    ]
    if dev.get("error"):
        lines.append(f"device error: {dev['error']}")
    lines.append("verdict:")
    lines += [f"  {k:<22} {v}" for k, v in r.get("verdict", {}).items()]
    t = r.get("tests")
    if isinstance(t, dict) and "passed" in t:
        lines.append(
            f"tests ({t['mode']}): {t['passed']} passed, {len(t['failed'])} failed, "
            f"{len(t['errors'])} errors, {len(t['skipped'])} skipped ({t['wall_s']:.0f} s)"
        )
        lines += [f"  not passed: {n}" for n in t["failed"] + t["errors"] + t["skipped"]]
    c = r.get("correctness")
    if isinstance(c, list):
        lines.append("float64 vs the CPU reference (max relative error; bar 1e-10):")
        for row in c:
            lines.append(
                f"  {'-'.join(map(str, row['sizes']))} batch {row['batch']}, {row['pipeline']}: "
                f"grads {row['grad_rel_err']:.1e}, J {row['J_rel_err']:.1e}, "
                f"params after {row['steps']} Adam steps {row['param_rel_err']:.1e}"
            )
    tr = r.get("training")
    if isinstance(tr, dict):
        for name, d in tr.items():
            if not isinstance(d, dict) or "cpu" not in d:
                continue
            g, c0 = d["gpu"], d["cpu"]
            lines.append(
                f"training {name}: test accuracy GPU {g['test_accuracy']:.4f} "
                f"({g['stages']} stage(s), {g['train_s']:.1f} s), CPU {c0['test_accuracy']:.4f} "
                f"({c0['train_s']:.1f} s), {g['epochs']} epoch(s)"
            )
    steps = r.get("step")
    if isinstance(steps, list):
        lines.append("float32 training step, median ms (graphpart / peer: >1 is slower):")
        for s in steps:
            gp = s["graphpart"]
            peers = []
            for p in ("cupy", "torch"):
                if s[p] is None:
                    peers.append(f"{p} {s[p + '_status']}")
                else:
                    peers.append(f"{p} {_ms(s[p]['median_ms'])} (x{_x(s['ratio_' + p])})")
            lines.append(
                f"  {'-'.join(map(str, s['sizes']))} batch {s['batch']}: graphpart "
                f"{_ms(gp['median_ms'])} ({gp['tflops']:.2f} TFLOP/s); " + "; ".join(peers)
            )
    g = r.get("gemm")
    if isinstance(g, dict) and "sizes" in g:
        lines.append(
            f"gemm float32, median ms (kernel's speed as a fraction of cuBLAS; cuBLAS "
            f"{g['cublas_status']}):"
        )
        for row in g["sizes"]:
            ref = (
                f"cuBLAS ({row['cublas_via']}) nn {_ms(row['cublas_nn_ms'])}, nt "
                f"{_ms(row['cublas_nt_ms'])}; ratio nn {_x(row['ratio_nn'])}, nt "
                f"{_x(row['ratio_nt'])}"
                if row["cublas_via"]
                else "cuBLAS not measured"
            )
            lines.append(
                f"  n={row['n']}: kernel (register tile {row['register_tile']}) nn "
                f"{_ms(row['kernel_nn_ms'])} ({row['kernel_nn_tflops']:.2f} TFLOP/s), nt "
                f"{_ms(row['kernel_nt_ms'])}, err {row['max_rel_err']:.1e}; {ref}"
            )
            if row.get("variants_nn_ms"):
                v = ", ".join(f"{k}: {_ms(ms)}" for k, ms in row["variants_nn_ms"].items())
                lines.append(f"    nn by register tile (outputs a thread and axis): {v}")
    for name in ("device", "tests", "correctness", "training", "step", "gemm"):
        sec = r.get(name)
        if isinstance(sec, dict) and "error" in sec:
            lines.append(f"{name}: ERROR {sec['error']}")
    return "\n".join(lines)
