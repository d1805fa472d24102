"""Training-step benchmark: graphpart's engine vs hand-written NumPy (and PyTorch) vs BLAS peak."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from graphpart.tools.bench.contenders import SIZES
from graphpart.tools.bench.report import format_report
from graphpart.tools.bench.step import run_step_benchmark


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m graphpart.tools.bench` and `graphpart bench`: run, print the report or JSON."""
    ap = argparse.ArgumentParser(prog="python -m graphpart.tools.bench", description=__doc__)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="layer widths, d,h1,..,q")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--activation", default="relu", choices=("relu", "sigmoid", "tanh", "identity"))
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--optimizers", default="adam,sgd", help="comma list of adam, sgd")
    ap.add_argument("--bias", default="both", choices=("both", "yes", "no"))
    ap.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="blocks of back-to-back steps per contender (order rotated)",
    )
    ap.add_argument(
        "--pause",
        type=float,
        default=0.15,
        help="seconds of rest before each block (lets thread pools go idle)",
    )
    ap.add_argument(
        "--startup",
        action="store_true",
        help="also time the first step in fresh processes (compile vs cache)",
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(args[1:] if args[:1] == ["--"] else args)  # `graphpart bench -- ...`
    res = run_step_benchmark(
        [int(s) for s in a.sizes.split(",")],
        a.batch,
        a.dtype,
        a.activation,
        a.repeats,
        a.warmup,
        optimizers=[s.strip() for s in a.optimizers.split(",") if s.strip()],
        biases={"both": (True, False), "yes": (True,), "no": (False,)}[a.bias],
        threads=a.threads,
        torch=False if a.no_torch else None,
        matmul_n=a.matmul_n,
        rounds=a.rounds,
        pause=a.pause,
        startup=a.startup,
    )
    print(json.dumps(res, indent=1) if a.json else format_report(res))
    return 0
