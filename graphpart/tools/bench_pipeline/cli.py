"""Pipeline benchmark: boundary transfers, K=2 throughput vs one process, bubble vs simulator."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from graphpart.tools.bench_pipeline.driver import SIZES, run
from graphpart.tools.bench_pipeline.report import format_report


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m graphpart.tools.bench_pipeline`, `graphpart bench --pipeline`: run and print."""
    ap = argparse.ArgumentParser(
        prog="python -m graphpart.tools.bench_pipeline", description=__doc__
    )
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="layer widths d,h1,..,q")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--microbatches", default="1,2,4,8", help="comma list of M")
    ap.add_argument("--schedules", default="1f1b,gpipe", help="comma list of 1f1b, gpipe")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per configuration")
    ap.add_argument("--transfer-samples", type=int, default=200)
    ap.add_argument("--no-torch", action="store_true", help="skip torch.distributed.pipelining")
    ap.add_argument("--no-k4", action="store_true", help="skip the four-stage runs")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    res = run(
        [int(s) for s in a.sizes.split(",")],
        a.batch,
        a.dtype,
        [int(s) for s in a.microbatches.split(",")],
        [s.strip() for s in a.schedules.split(",") if s.strip()],
        a.warmup,
        a.steps,
        a.transfer_samples,
        with_torch=not a.no_torch,
        four_stages=not a.no_k4,
    )
    print(json.dumps(res, indent=1) if a.json else format_report(res))
    return 0
