"""Pipeline benchmark: boundary transfers, K=2 throughput vs one process, bubble vs simulator."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from graphpart.errors import ConfigError
from graphpart.plan.kinds import SCHEDULES
from graphpart.tools.bench.cli import (
    OneLineParser,
    add_model_arguments,
    int_at_least,
    int_list,
    name_list,
    run_main,
)
from graphpart.tools.bench_pipeline.driver import SIZES, run
from graphpart.tools.bench_pipeline.report import format_report
from graphpart.tools.bench_pipeline.rounds import round_kinds
from graphpart.tools.bench_pipeline.throughput import RAY_TRANSPORTS


def add_pipeline_arguments(ap: argparse.ArgumentParser) -> None:
    """The pipeline benchmark's options (`graphpart bench pipeline`)."""
    add_model_arguments(
        ap, SIZES, 3, "layer widths d,h1,..,q (two layers or more: the pipeline has 2 stages)"
    )
    ap.add_argument(
        "--microbatches",
        type=int_list(1, "micro-batch counts M"),
        default="1,2,4,8",
        help="comma list of M",
    )
    ap.add_argument(
        "--schedules",
        type=name_list(SCHEDULES, "a schedule"),
        default="1f1b,gpipe",
        help="comma list of " + ", ".join(SCHEDULES),
    )
    ap.add_argument("--warmup", type=int_at_least(0), default=3, help="untimed steps first")
    ap.add_argument(
        "--steps", type=int_at_least(1), default=15, help="timed steps per configuration"
    )
    ap.add_argument(
        "--transfer-samples", type=int_at_least(1), default=200, help="timed hops per size"
    )
    ap.add_argument(
        "--transports",
        type=name_list(RAY_TRANSPORTS, "a transport"),
        default=",".join(RAY_TRANSPORTS),
        help="comma list of the K=2 pipelines' transports, of " + ", ".join(RAY_TRANSPORTS),
    )
    ap.add_argument("--no-torch", action="store_true", help="skip torch.distributed.pipelining")
    ap.add_argument("--no-k4", action="store_true", help="skip the four-stage runs")
    ap.add_argument(
        "--data-parallel",
        type=int_at_least(0),
        default=2,
        help="replicas of graphpart's data parallelism beside torch DDP (0 or 1: skip)",
    )
    ap.add_argument(
        "--rounds",
        type=int_at_least(0),
        default=0,
        help="also run the schedules in turns on the same workers this many rounds an M (the "
        "first schedule the baseline of each round's bubble ratio; 0: skip)",
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")


def run_pipeline(a: argparse.Namespace) -> int:
    """Run the pipeline benchmark with parsed options; print the report (or JSON)."""
    too_many = [m for m in a.microbatches if m > a.batch]
    if too_many:
        prog = getattr(a, "prog", "python -m graphpart.tools.bench_pipeline")
        raise ConfigError(
            f"argument --microbatches: M={too_many[0]} exceeds --batch {a.batch}; each "
            f"micro-batch needs at least one row (see {prog} --help)"
        )
    if a.rounds:
        round_kinds(a.schedules)  # a ConfigError before any run, naming the schedules
    res = run(
        a.sizes,
        a.batch,
        a.dtype,
        a.microbatches,
        a.schedules,
        a.warmup,
        a.steps,
        a.transfer_samples,
        with_torch=not a.no_torch,
        four_stages=not a.no_k4,
        data_parallel=a.data_parallel,
        progress=_say,
        transports=a.transports,
        rounds=a.rounds,
    )
    print(json.dumps(res, indent=1) if a.json else format_report(res))
    return 0


def main(
    argv: Sequence[str] | None = None, prog: str = "python -m graphpart.tools.bench_pipeline"
) -> int:
    """`python -m graphpart.tools.bench_pipeline`: run and print."""
    ap = OneLineParser(
        prog=prog, description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_pipeline_arguments(ap)
    ap.set_defaults(prog=prog)
    return run_main(ap, argv, run_pipeline)


def _say(message: str) -> None:
    """Progress on stderr (stdout keeps the report or the JSON)."""
    print(message, file=sys.stderr, flush=True)
