"""The pipeline benchmark: (a) boundary transfers, (b) K=2 throughput beside torch's pipelining,
(c) the simulator, (d) a projection to a core per stage."""

from graphpart.tools.bench_pipeline.cli import main
from graphpart.tools.bench_pipeline.driver import SIZES, run
from graphpart.tools.bench_pipeline.report import format_report
from graphpart.tools.bench_pipeline.simulator import call_overhead_s, predict_step, project
from graphpart.tools.bench_pipeline.throughput import (
    TARGET_RATIO,
    measure_pipeline,
    measure_single,
)
from graphpart.tools.bench_pipeline.torch_peer import (
    run_torch_ddp,
    run_torch_pipeline,
    run_torch_single,
)
from graphpart.tools.bench_pipeline.transfer import (
    TARGET_TRANSFER_MS,
    TRANSFER_SHAPE,
    measure_transfer,
)

__all__ = [
    "SIZES",
    "TARGET_RATIO",
    "TARGET_TRANSFER_MS",
    "TRANSFER_SHAPE",
    "call_overhead_s",
    "format_report",
    "main",
    "measure_pipeline",
    "measure_single",
    "measure_transfer",
    "predict_step",
    "project",
    "run",
    "run_torch_ddp",
    "run_torch_pipeline",
    "run_torch_single",
]
