"""The training-step benchmark's plain-text report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphpart.tools.bench.contenders import CONTENDERS


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_report(result: Mapping[str, Any]) -> str:
    """A plain-text report of a run_step_benchmark result."""
    c, env, mm = result["config"], result["env"], result["matmul"]
    blas = (
        ", ".join(
            f"{b['internal_api']} {b['version']} ({b['num_threads']} threads, "
            f"{b['threading_layer']}, {b['architecture']})"
            for b in env["blas"]
        )
        or "?"
    )
    lines = [
        f"MLP {'-'.join(map(str, c['sizes']))}, batch {c['batch']}, {c['dtype']}, "
        f"{c['activation']}, softmax cross-entropy; {c['repeats']} timed steps after "
        f"{c['warmup']} warm-up, in {c['rounds']} rounds of blocks",
        f"CPU {env['cpu']}, {env['cores']} cores, {c['threads']} threads for every contender; "
        f"BLAS {blas}; graphpart's products: {env.get('graphpart_blas', 'not recorded')}",
        f"python {env['python']}, numpy {env['numpy']}, numba {env['numba']}, "
        f"torch {env['torch'] or 'not installed'}",
        f"matmul {mm['n']}^3 {mm['dtype']}: {mm['gflops']:.1f} GFLOP/s best, before or after "
        f"the cases ({mm['gflops_median']:.1f} median);",
        f"step = {result['flops_per_step'] / 1e9:.3f} GFLOP -> matmul-bound floor "
        f"{mm['floor_ms']:.2f} ms; the step's own matmuls alone (NumPy): "
        f"{result['step_matmuls']['best_ms']:.2f} ms best, "
        f"{result['step_matmuls']['median_ms']:.2f} ms median",
        "",
        "clean: median of the steps that waited for a CPU < 5% of their time (n of them);",
        "gp/this: graphpart's median over this contender's, paired by round [best over best]",
        "phases: graphpart's and numpy's median forward, backward, update and other ms",
        "",
        f"{'case':<14}{'contender':<11}{'median ms':>10}{'clean ms (n)':>14}{'best ms':>9}"
        f"{'samples/s':>11}{'gp/this  paired  [best]':>24}"
        f"{'fwd':>7}{'bwd':>7}{'update':>7}{'other':>7}",
    ]
    for case in result["cases"]:
        label = f"{case['optimizer']} {'bias' if case['bias'] else 'no bias'}"
        if case.get("foreign_load") is not None:
            lines.append(
                f"{label}: other processes took {100 * case['foreign_load']:.0f}% "
                "of the CPUs meanwhile"
            )
        for name in CONTENDERS:
            r = case[name]
            if r is None:
                continue
            ratio = (
                ""
                if name == "graphpart"
                else (
                    f"{case[f'ratio_{name}']:.3f} {case[f'ratio_{name}_paired']:.3f} "
                    f"[{case[f'ratio_{name}_best']:.3f}]"
                )
            )
            ph = r.get("phases_median_ms")
            cols = (
                "".join(f"{ph[k]:>7.2f}" for k in ("forward", "backward", "update", "other"))
                if ph
                else ""
            )
            clean = f"{_f(r['clean_median_ms'], '.2f')} ({r['clean_steps']})"
            lines.append(
                f"{label:<14}{name:<11}{r['median_ms']:>10.2f}{clean:>14}"
                f"{r['best_ms']:>9.2f}{r['samples_per_s']:>11.0f}{ratio:>24}{cols}"
            )
            label = ""
    h = result["headline"]
    lines += [
        "",
        f"headline ({h['optimizer']}, {'bias' if h['bias'] else 'no bias'}): graphpart/numpy "
        f"{h['ratio_numpy_paired']:.3f} paired by round (medians {h['ratio_numpy']:.3f}, best "
        f"{h['ratio_numpy_best']:.3f}, clean {_f(h['ratio_numpy_clean'], '.3f')}), "
        f"graphpart/torch {_f(h['ratio_torch_paired'], '.3f')} (medians "
        f"{_f(h['ratio_torch'], '.3f')}, best {_f(h['ratio_torch_best'], '.3f')}, "
        f"clean {_f(h['ratio_torch_clean'], '.3f')}); "
        f"{100 * h['peak_fraction']:.0f}% of the matmul peak "
        f"({100 * h['peak_fraction_best']:.0f}% at the best step); in this process the engine "
        f"built in {h['graphpart_build_s']:.2f} s and took its first step in "
        f"{h['graphpart_first_step_s']:.2f} s",
        f"load average before/after: {_f((env.get('loadavg') or [None])[0], '.2f')} / "
        f"{_f((env.get('loadavg_after') or [None])[0], '.2f')}; other processes took "
        f"{_f(None if env.get('foreign_load') is None else 100 * env['foreign_load'], '.0f')}% "
        "of the CPUs during the run (0% is a quiet machine; above a few %, distrust medians)",
    ]
    if result.get("startup"):
        for i, s in enumerate(result["startup"]):
            kind = "empty cache (compile)" if i == 0 else "cached kernels"
            lines.append(
                f"fresh process {i + 1}, {kind}: import {s['import_s']:.2f} s, "
                f"engine build {s['build_s']:.2f} s, "
                f"first step {s['first_step_s']:.2f} s, second step "
                f"{1e3 * s['second_step_s']:.1f} ms, process {s['process_s']:.2f} s"
            )
    return "\n".join(lines)
