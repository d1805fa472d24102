"""`gp.value_and_grad` vs the reference vs PyTorch's forward+backward, each in its own process.

    python -m graphpart.tools.bench.value_and_grad [--json] [--threads 1,2] [--repeats 20]

Per thread count, every contender runs in a fresh process (threads pinned through the
environment, threadpoolctl and torch.set_num_threads), `warmup` untimed calls then `repeats`
timed ones; `rounds` rounds, order rotated, so that load from elsewhere hits all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import graphpart
from graphpart.tools.bench.cli import (
    OneLineParser,
    add_model_arguments,
    int_at_least,
    int_list,
    name_list,
    run_main,
)
from graphpart.tools.bench.contenders import SIZES, init_mlp_params, make_torch_step
from graphpart.tools.bench.cost import matmul_gflops, step_flops, step_matmul_times
from graphpart.tools.bench.step import _paired_ratio, _summary
from graphpart.tools.machine import ForeignLoad, environment, run_delay_s, thread_limits

CONTENDERS = ("graphpart", "reference", "torch")
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _problem(sizes: Sequence[int], batch: int, dtype: str, seed: int = 0) -> tuple:
    g = graphpart.mlp(list(sizes), activation="relu", bias=True, loss="cross_entropy")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch).astype(np.int64)
    return g, init_mlp_params(sizes, "relu", True, dtype, seed), {"x": x, "y": y}


def _call(contender: str, sizes: Sequence[int], batch: int, dtype: str) -> Any:
    """The call timed for `contender` (a function of no arguments), or None without torch."""
    g, params, data = _problem(sizes, batch, dtype)
    if contender == "graphpart":
        return lambda: graphpart.value_and_grad(g, params, data)
    if contender == "reference":
        return lambda: graphpart.value_and_grad(g, params, data, executor="reference")
    made = make_torch_step(params, sizes, "relu", True, "sgd", data["x"], data["y"])
    if made is None:
        return None
    import torch

    model, loss = made[1], torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        loss(model(xt), yt).backward()

    return forward_backward


def child(
    contender: str,
    threads: int,
    sizes: Sequence[int],
    batch: int,
    dtype: str,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    """One contender timed in this process (what each fresh process runs)."""
    fn = _call(contender, sizes, batch, dtype)
    if fn is None:
        return {"contender": contender, "missing": "torch is not installed"}
    with thread_limits(threads, contender == "torch"):
        t = time.perf_counter()
        fn()
        first = time.perf_counter() - t
        for _ in range(warmup):
            fn()
        load = ForeignLoad().start()
        times, delays = [], []
        for _ in range(repeats):
            d0, t = run_delay_s(), time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
            d1 = run_delay_s()
            delays.append(None if d0 is None or d1 is None else max(0.0, d1 - d0))
        out: dict[str, Any] = {"contender": contender, "first_call_s": first}
        out["foreign_load"] = load.stop()  # other processes' share of the CPUs meanwhile
        out["times"], out["delays"] = times, delays
        if contender == "graphpart":  # the machine's matmul rate, at the same threads
            out["matmul"] = matmul_gflops(2048, dtype, 5)
            out["matmuls_alone"] = step_matmul_times(sizes, batch, dtype, repeats)
            out["max_rel_err_vs_reference"] = _check(sizes, batch, dtype)
    return out


def _check(sizes: Sequence[int], batch: int, dtype: str) -> float:
    """Largest relative difference between the timed result and the reference's."""
    g, params, data = _problem(sizes, batch, dtype)
    J, grads = graphpart.value_and_grad(g, params, data)
    Jr, gr = graphpart.value_and_grad(g, params, data, executor="reference")
    errs = [abs(J - Jr) / abs(Jr)]
    errs += [float(np.abs(grads[k] - gr[k]).max() / np.abs(gr[k]).max()) for k in gr]
    return max(errs)


def _spawn(contender: str, threads: int, args: dict[str, Any]) -> dict[str, Any]:
    root = str(Path(graphpart.__file__).resolve().parent.parent)
    env = {**os.environ, **dict.fromkeys(_THREAD_ENV, str(threads))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    spec = json.dumps({"contender": contender, "threads": threads, **args})
    proc = subprocess.run(
        [sys.executable, "-m", "graphpart.tools.bench.value_and_grad", "--child", spec],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the {contender} process failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_benchmark(
    sizes: Sequence[int] = SIZES,
    batch: int = 256,
    dtype: str = "float32",
    threads: Sequence[int] = (1, 2),
    repeats: int = 20,
    warmup: int = 5,
    rounds: int = 3,
    contenders: Sequence[str] = CONTENDERS,
) -> dict[str, Any]:
    """Time each contender in `rounds` fresh processes per thread count (order rotated).

    Per thread count and contender: median, best and mean ms over every timed call, the
    ratio to torch (medians, and the median over rounds of each round's ratio), the GFLOP/s
    of the call and its fraction of the matmul rate (2048^3, measured in the graphpart
    process at the same threads, the best of the rounds); graphpart's first call in a process.
    """
    args = {"sizes": list(sizes), "batch": batch, "dtype": dtype}
    args.update(repeats=repeats, warmup=warmup)
    flops = step_flops(sizes, batch)
    results: dict[str, Any] = {}
    for n in threads:
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
        for r in range(rounds):
            for j in range(len(contenders)):
                c = contenders[(r + j) % len(contenders)]
                runs[c].append(_spawn(c, n, args))
        results[str(n)] = _summarise(runs, batch, flops)
    return {
        "config": {
            **args,
            "rounds": rounds,
            "threads": list(threads),
            "model": "relu, bias, softmax cross-entropy, no weight decay",
        },
        "env": environment(),
        "date": time.strftime("%Y-%m-%d"),
        "flops_per_call": flops,
        "results": results,
    }


def _summarise(runs: dict[str, list[dict[str, Any]]], batch: int, flops: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rounds = {
        c: [i for i, run in enumerate(rs) for _ in run.get("times", [])] for c, rs in runs.items()
    }
    times = {c: [t for run in rs for t in run.get("times", [])] for c, rs in runs.items()}
    gp = runs.get("graphpart", [])
    peak = max((run["matmul"]["gflops"] for run in gp), default=None)
    alone = [run["matmuls_alone"]["median_ms"] for run in gp]
    out["matmuls_alone_ms"] = statistics.median(alone) if alone else None
    for c, rs in runs.items():
        if not times[c]:
            out[c] = {"missing": rs[0].get("missing", "not run") if rs else "not run"}
            continue
        delays = [d for run in rs for d in run["delays"]]
        s = _summary(times[c], delays, batch)
        s["first_call_s"] = [run["first_call_s"] for run in rs]
        s["foreign_load"] = max((run["foreign_load"] or 0.0) for run in rs)
        s["gflops"] = flops / (s["median_ms"] * 1e6)
        s["peak_fraction"] = None if peak is None else s["gflops"] / peak
        if times.get("torch"):
            s["ratio_torch"] = s["median_ms"] / (1e3 * statistics.median(times["torch"]))
            s["ratio_torch_paired"] = _paired_ratio(
                times[c], rounds[c], times["torch"], rounds["torch"]
            )
        out[c] = s
    out["matmul_gflops"] = peak
    out["max_rel_err_vs_reference"] = max(
        (run["max_rel_err_vs_reference"] for run in gp), default=None
    )
    return out


def format_report(result: dict[str, Any]) -> str:
    """The plain-text table of a run_benchmark result."""
    c, env = result["config"], result["env"]
    lines = [
        f"gp.value_and_grad, MLP {'-'.join(map(str, c['sizes']))}, batch {c['batch']}, "
        f"{c['dtype']}, {c['model']}; {result['date']}",
        f"CPU {env['cpu']}, {env['cores']} cores; numpy {env['numpy']}, numba {env['numba']}, "
        f"torch {env['torch'] or 'not installed'}",
        f"each contender in its own process, {c['rounds']} rounds x {c['repeats']} timed calls "
        f"after {c['warmup']} warm-up; {result['flops_per_call'] / 1e9:.3f} GFLOP of matmuls "
        "a call",
        "",
        "clean: median of the calls that waited for a CPU < 5% of their time (n of them);",
        "/torch: median over torch's median; paired: median over rounds of the same ratio;",
        "load: the most that other processes took of the CPUs while one process timed",
        "",
        f"{'threads':<8}{'contender':<11}{'median ms':>10}{'clean ms (n)':>14}{'best ms':>9}"
        f"{'/torch':>8}{'paired':>8}{'GFLOP/s':>9}{'of peak':>8}{'1st call s':>11}{'load':>6}",
    ]
    for n, res in result["results"].items():
        label = n
        for name in CONTENDERS:
            r = res.get(name)
            if r is None:
                continue
            if "missing" in r:
                lines.append(f"{label:<8}{name:<11}{r['missing']}")
            else:
                ratio = r.get("ratio_torch")
                paired = r.get("ratio_torch_paired")
                clean = r["clean_median_ms"]
                clean = f"{'-' if clean is None else format(clean, '.2f')} ({r['clean_steps']})"
                lines.append(
                    f"{label:<8}{name:<11}{r['median_ms']:>10.2f}{clean:>14}{r['best_ms']:>9.2f}"
                    f"{'-' if ratio is None else format(ratio, '.3f'):>8}"
                    f"{'-' if paired is None else format(paired, '.3f'):>8}"
                    f"{r['gflops']:>9.1f}"
                    f"{'-' if r['peak_fraction'] is None else format(r['peak_fraction'], '.0%'):>8}"
                    f"{statistics.median(r['first_call_s']):>11.2f}"
                    f"{r['foreign_load']:>6.0%}"
                )
            label = ""
        mm, err = res.get("matmul_gflops"), res.get("max_rel_err_vs_reference")
        if mm is not None:
            lines.append(
                f"{'':<8}matmul 2048^3 at {n} thread(s): {mm:.1f} GFLOP/s; the call's own "
                f"matmuls alone (NumPy): {res['matmuls_alone_ms']:.2f} ms median"
            )
            lines.append(f"{'':<8}graphpart vs reference: largest relative difference {err:.1e}")
    return "\n".join(lines)


def add_value_and_grad_arguments(ap: argparse.ArgumentParser) -> None:
    """The benchmark's options (`python -m graphpart.tools.bench.value_and_grad`)."""
    add_model_arguments(ap, SIZES)
    ap.add_argument(
        "--threads",
        type=int_list(1, "thread counts"),
        default=[1, 2],
        help="thread counts to run every contender at, e.g. 1,2",
    )
    ap.add_argument("--repeats", type=int_at_least(1), default=20, help="timed calls a process")
    ap.add_argument("--warmup", type=int_at_least(0), default=5, help="untimed calls first")
    ap.add_argument(
        "--rounds", type=int_at_least(1), default=3, help="processes per contender and threads"
    )
    ap.add_argument(
        "--contenders",
        type=name_list(CONTENDERS, "a contender"),
        default=list(CONTENDERS),
        help=f"a comma list of {', '.join(CONTENDERS)}",
    )
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON")


def run_value_and_grad(a: argparse.Namespace) -> int:
    """Run the benchmark with parsed options; print the report (or JSON)."""
    print(
        f"timing gp.value_and_grad, the reference and torch in fresh processes at "
        f"{','.join(map(str, a.threads))} thread(s)...",
        file=sys.stderr,
    )
    result = run_benchmark(
        a.sizes, a.batch, a.dtype, a.threads, a.repeats, a.warmup, a.rounds, a.contenders
    )
    print(json.dumps(result) if a.json else format_report(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m graphpart.tools.bench.value_and_grad`: run, print the report or JSON."""
    ap = OneLineParser(prog="python -m graphpart.tools.bench.value_and_grad", description=__doc__)
    add_value_and_grad_arguments(ap)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one contender's process

    def body(a: argparse.Namespace) -> int:
        if a.child:
            print(json.dumps(child(**json.loads(a.child))))
            return 0
        return run_value_and_grad(a)

    return run_main(ap, argv, body)


if __name__ == "__main__":
    sys.exit(main())
