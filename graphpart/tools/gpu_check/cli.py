"""Command line of the GPU check: options, run, print the summary, write the JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence

from numba.core.errors import NumbaPerformanceWarning

from graphpart.tools.bench.cli import int_at_least, int_list
from graphpart.tools.gpu_check.report import format_summary
from graphpart.tools.gpu_check.run import CheckOptions, run_gpu_check

SECTIONS = ("tests", "correctness", "training", "ray", "step", "gemm")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m graphpart.tools.gpu_check",
        description="Verify graphpart's CUDA path on this machine's GPU: the CUDA tests for "
        "real, float64 gradients and steps against the CPU reference (one stage, two stages, "
        "two Ray actors sharing the GPU), training on the GPU vs the CPU, a float32 training "
        "step vs CuPy/PyTorch, and the gemm kernel vs cuBLAS. Prints one summary.",
    )
    p.add_argument("--out", metavar="FILE", help="also write the report there as JSON")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes and one test (for Numba's simulator, NUMBA_ENABLE_CUDASIM=1)",
    )
    p.add_argument(
        "--skip",
        default="",
        metavar="LIST",
        help=f"comma list of sections to leave out: {', '.join(SECTIONS)}",
    )
    p.add_argument("--ray", action="store_true", help="with --quick: the Ray pipeline checks too")
    p.add_argument("--tests-k", metavar="EXPR", help="a pytest -k expression for the tests")
    p.add_argument("--gemm-sizes", type=int_list(1, "--gemm-sizes"), metavar="N,N,...")
    p.add_argument("--batches", type=int_list(1, "--batches"), metavar="B,B,...")
    p.add_argument("--repeats", type=int_at_least(1), metavar="N")
    return p


def options(args: argparse.Namespace) -> CheckOptions:
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SECTIONS)
    if unknown:
        raise SystemExit(
            f"gpu-check: error: --skip {','.join(sorted(unknown))}: valid: {', '.join(SECTIONS)}"
        )
    kw: dict = {name: False for name in skip}
    if args.ray and "ray" not in skip:
        kw["ray"] = True
    if args.tests_k is not None:
        kw["tests_select"] = args.tests_k
    if args.gemm_sizes:
        kw["gemm_sizes"] = tuple(args.gemm_sizes)
    if args.batches:
        kw["step_batches"] = tuple(args.batches)
    if args.repeats:
        kw["repeats"] = args.repeats
    return CheckOptions.quick(**kw) if args.quick else CheckOptions(**kw)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; exit 0 when every criterion that ran passed, 1 otherwise."""
    args = parser().parse_args(argv)
    opts = options(args)
    # small launches (a 2 x 2 layer, the tests' tiny shapes) are meant: no warning per launch
    warnings.simplefilter("ignore", NumbaPerformanceWarning)
    report = run_gpu_check(opts, log=lambda m: print(m, file=sys.stderr, flush=True))
    text = format_summary(report)
    print(text)
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2, default=str)
        os.replace(tmp, args.out)
        print(f"report: {args.out}")
    failed = any(v.startswith("FAIL") for v in report["verdict"].values())
    return 1 if failed else 0
