"""`tools/gpu-check`: the CUDA path verified on a real GPU (kernels, float64 checks, timings)."""

from graphpart.tools.gpu_check.cli import main
from graphpart.tools.gpu_check.run import CheckOptions, run_gpu_check

__all__ = ["CheckOptions", "main", "run_gpu_check"]
