"""The training-step benchmark: graphpart vs plain NumPy vs PyTorch vs the BLAS matmul peak."""

from graphpart.tools.bench.cli import main
from graphpart.tools.bench.contenders import (
    CONTENDERS,
    OPTIMIZER_KW,
    SIZES,
    NumpyMLP,
    init_mlp_params,
    make_graphpart,
    make_torch_step,
)
from graphpart.tools.bench.cost import matmul_gflops, step_flops, step_matmul_times
from graphpart.tools.bench.report import format_report
from graphpart.tools.bench.startup import measure_startup
from graphpart.tools.bench.step import run_step_benchmark

__all__ = [
    "CONTENDERS",
    "OPTIMIZER_KW",
    "SIZES",
    "NumpyMLP",
    "format_report",
    "init_mlp_params",
    "main",
    "make_graphpart",
    "make_torch_step",
    "matmul_gflops",
    "measure_startup",
    "run_step_benchmark",
    "step_flops",
    "step_matmul_times",
]
