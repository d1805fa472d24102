"""Contract of tools/gpu-check (graphpart.tools.gpu_check) and of how CUDA stages get GPUs.

Without a GPU: `gpus_per_stage` gives each CUDA stage actor a whole GPU when there are enough
and otherwise an even share that Ray can place (every request fits on one GPU; no larger
share would), and refuses a cluster without a GPU in one line. (The peers' steps are the CPU
benchmark's own, NumpyMLP over CuPy and torch_model on CUDA: tests/test_bench.py checks them.)
The verdict says pass, FAIL or "not measured"/"not run" per criterion of issue 13 (never a
figure for a peer that is missing), and the summary prints every section. The whole check
runs under Numba's CUDA simulator with --quick: the CUDA tests, float64 gradients and Adam
steps equal the CPU reference to 1e-10 (one stage, two stages in process; with --ray two
Ray actors sharing the simulator's one GPU), GPU and CPU training agree, the step and gemm
timings are reported with the peers "not installed" or without CUDA, and the JSON is written.

The simulator runs in a subprocess that executes this file as a script (NUMBA_ENABLE_CUDASIM
must be set before numba is imported).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphpart.engines.transports.actors import gpus_per_stage
from graphpart.errors import ConfigError
from graphpart.tools.gpu_check.cli import main, options, parser
from graphpart.tools.gpu_check.report import format_summary
from graphpart.tools.gpu_check.run import GEMM_BAR, CheckOptions, verdict

ROOT = Path(__file__).resolve().parents[1]
SIZES = [7, 6, 5, 4]


# --- GPUs per stage (pure) -------------------------------------------------------------------


def _places(share: float, stages: int, gpus: int) -> bool:
    """Whether `stages` requests of `share` GPU fit on `gpus` GPUs, each on one GPU."""
    free = [1.0] * gpus
    for _ in range(stages):
        k = max(range(gpus), key=lambda i: free[i])
        if free[k] + 1e-9 < share:
            return False
        free[k] -= share
    return True


def test_gpus_per_stage_examples():
    assert gpus_per_stage(4, 2) == 1.0
    assert gpus_per_stage(2, 2) == 1.0
    assert gpus_per_stage(1, 2) == 0.5  # the lent machine: two stages share one GPU
    assert gpus_per_stage(3, 4) == 0.5  # 3/4 each would leave the fourth stage unplaced
    assert gpus_per_stage(1, 3) == 0.3333
    assert gpus_per_stage(1.5, 2) == 0.5  # whole GPUs count


@pytest.mark.parametrize("gpus", range(1, 9))
def test_gpus_per_stage_always_places_and_is_the_largest_even_share(gpus):
    for stages in range(1, 17):
        share = gpus_per_stage(gpus, stages)
        assert 0 < share <= 1
        assert _places(share, stages, gpus), (gpus, stages, share)
        per_gpu = math.ceil(stages / gpus)
        if per_gpu > 1:  # one stage fewer per GPU does not fit
            assert not _places(1 / (per_gpu - 1), stages, gpus)


def test_gpus_per_stage_refuses_no_gpu_in_one_line():
    with pytest.raises(ConfigError) as exc:
        gpus_per_stage(0, 2)
    msg = str(exc.value)
    assert "\n" not in msg and "needs a GPU" in msg and "has 0" in msg and "--device cpu" in msg
    with pytest.raises(ValueError):
        gpus_per_stage(1, 0)


# --- verdict, summary, options ---------------------------------------------------------------


def _report(ratio_nn, cublas="ok"):
    row = {
        "n": 4096, "register_tile": 8, "max_rel_err": 1e-7, "kernel_nn_ms": 10.0,
        "kernel_nt_ms": 11.0, "kernel_nn_tflops": 13.7, "cublas_via": "cupy" if ratio_nn else None,
        "cublas_nn_ms": 10.0 * ratio_nn if ratio_nn else None, "cublas_nt_ms": None,
        "cublas_nn_tflops": None, "ratio_nn": ratio_nn, "ratio_nt": None,
        "variants_nn_ms": {"8": 10.0, "1": 40.0},
    }  # fmt: skip
    run = {"test_accuracy": 0.97, "train_s": 1.0, "stages": 1, "epochs": 30}
    return {
        "date": "2026-12-01T00:00:00+00:00",
        "elapsed_s": 100.0,
        "within_budget": True,
        "device": {"name": "a GPU", "numba": "0.68"},
        "tests": {"status": "passed", "mode": "gpu", "passed": 30, "failed": [], "errors": [],
                  "skipped": [], "wall_s": 20.0},
        "correctness": [{"sizes": SIZES, "batch": 8, "pipeline": p, "J_rel_err": 0.0,
                         "grad_rel_err": 1e-15, "steps": 3, "param_rel_err": 1e-15,
                         "passed": True} for p in ("1 stage(s)", "2 stage(s), shm")],
        "training": {"digits": {"cpu": run, "gpu": {**run, "test_accuracy": 0.975},
                                "passed": True}},
        "step": [{"sizes": SIZES, "batch": 256, "graphpart": {"median_ms": 1.0, "tflops": 1.0},
                  "cupy": None, "cupy_status": "not installed", "torch": None,
                  "torch_status": "not installed", "ratio_cupy": None, "ratio_torch": None}],
        "gemm": {"cublas_status": cublas, "sizes": [row]},
    }  # fmt: skip


def test_verdict_passes_fails_and_says_what_was_not_measured():
    good = verdict(_report(GEMM_BAR + 0.01), sim=False)
    assert all(v.startswith("pass") for v in good.values()), good
    assert "31% of cuBLAS at n=4096" in good["gemm_vs_cublas"]
    assert verdict(_report(GEMM_BAR - 0.01), sim=False)["gemm_vs_cublas"].startswith("FAIL")
    missing = verdict(_report(None, "CuPy: not installed"), sim=False)["gemm_vs_cublas"]
    assert missing == "not measured: cuBLAS CuPy: not installed"
    assert verdict(_report(0.9), sim=True)["gemm_vs_cublas"] == "not measured: simulator"
    r = _report(0.5)
    r["correctness"] = {"error": "CudaSupportError: boom", "traceback": ""}
    del r["tests"]
    v = verdict(r, sim=False)
    assert v["float64_vs_cpu_1e-10"] == "FAIL (CudaSupportError: boom)"
    assert v["cuda_tests"] == "not run"


def test_summary_prints_every_section_and_no_figure_for_a_missing_peer():
    text = format_summary(_report(None, "CuPy: not installed; PyTorch: not installed"))
    for needle in ("device: a GPU", "verdict:", "tests (gpu): 30 passed", "grads 1.0e-15",
                   "training digits: test accuracy GPU 0.9750", "cupy not installed",
                   "cuBLAS not measured", "nn by register tile"):  # fmt: skip
        assert needle in text, needle


def test_options():
    quick = options(parser().parse_args(["--quick", "--skip", "training,gemm", "--ray"]))
    assert quick.model == CheckOptions.quick().model and quick.ray
    assert not quick.training and not quick.gemm and quick.tests
    full = options(parser().parse_args(["--gemm-sizes", "512,1024", "--batches", "64"]))
    assert full.gemm_sizes == (512, 1024) and full.step_batches == (64,) and full.ray
    assert CheckOptions().gemm_sizes == (1024, 2048, 4096)
    assert CheckOptions().step_batches == (256, 4096)
    with pytest.raises(SystemExit, match="--skip bogus"):
        main(["--skip", "bogus"])


# --- the whole check under the simulator -----------------------------------------------------


def _check(tmp_path, *args, timeout=900, pythonpath=None):
    out = tmp_path / "report.json"
    path = os.pathsep.join(str(p) for p in (pythonpath, ROOT) if p)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": path}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run(
        [sys.executable, __file__, "--quick", "--out", str(out), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.ray  # a subprocess under the CUDA simulator
def test_quick_check_under_the_simulator(tmp_path):
    r, stdout = _check(tmp_path)
    assert r["device"]["simulated"] is True
    assert "verdict:" in stdout and "float64 vs the CPU reference" in stdout
    assert r["tests"]["status"] == "passed" and r["tests"]["mode"] == "simulator"
    rows = r["correctness"]
    assert [row["pipeline"].split(",")[0] for row in rows] == ["1 stage(s)"] * 2 + ["2 stage(s)"]
    for row in rows:
        assert row["passed"] and max(row["grad_rel_err"], row["param_rel_err"]) < 1e-10
    syn = r["training"]["synthetic"]
    assert syn["passed"] and syn["gpu"]["steps"] == syn["cpu"]["steps"] > 0
    assert r["verdict"]["digits_accuracy"].startswith("not run")
    (step,) = r["step"]
    assert step["graphpart"]["median_ms"] > 0
    for peer in ("cupy", "torch"):  # no GPU here: no figure, a reason
        assert step[peer] is None and step[f"ratio_{peer}"] is None
        assert "not installed" in step[f"{peer}_status"] or "without CUDA" in step[f"{peer}_status"]
    for row in r["gemm"]["sizes"]:
        assert row["max_rel_err"] < 1e-5 and row["kernel_nn_ms"] > 0
        assert row["cublas_via"] is None and row["ratio_nn"] is None
    assert set(r["gemm"]["sizes"][-1]["variants_nn_ms"]) == {"8", "4", "2", "1"}
    assert r["verdict"]["gemm_vs_cublas"] == "not measured: simulator"


@pytest.mark.ray  # a subprocess
def test_the_script_refuses_a_bad_cuda_and_passes_options_through():
    script = str(ROOT / "tools" / "gpu-check")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = {"capture_output": True, "text": True, "timeout": 120, "env": env}
    bad = subprocess.run([script, "--cuda", "cu11"], **run)
    assert bad.returncode == 2 and "--cuda cu11: valid: cu12, cu13" in bad.stderr
    ok = subprocess.run([script, "--no-install", "--", "--help"], **run)
    if importlib.util.find_spec("numba_cuda"):  # this Python has what the check needs
        assert ok.returncode == 0 and "--gemm-sizes" in ok.stdout, ok.stderr[-2000:]
    else:  # it lacks numba-cuda: refused in one line, naming what to install
        assert ok.returncode == 2 and "pip install" in ok.stderr.splitlines()[-1]
        assert "numba-cuda" in ok.stderr.splitlines()[-1]


@pytest.mark.ray  # Ray actors under the CUDA simulator
def test_two_ray_stages_share_one_gpu_under_the_simulator(tmp_path):
    r, _ = _check(tmp_path, "--ray", "--skip", "tests,training,step,gemm")
    shm = [row for row in r["correctness"] if "shm" in row["pipeline"]]
    assert len(shm) == 1 and shm[0]["pipeline"].startswith("2 stage(s)")
    assert shm[0]["passed"] and shm[0]["grad_rel_err"] < 1e-10
    assert r["verdict"]["ray_stages_on_gpus"] == "pass"


@pytest.mark.ray  # a subprocess under the CUDA simulator
def test_without_ray_the_ray_checks_are_left_out_and_said_so(tmp_path):
    fake = tmp_path / "noray"
    fake.mkdir()
    (fake / "ray.py").write_text("raise ImportError('no ray here')\n")
    skip = "tests,correctness,training,step,gemm"
    r, _ = _check(tmp_path, "--ray", "--skip", skip, pythonpath=fake)
    assert r["ray"].startswith("not installed")
    assert r["verdict"]["ray_stages_on_gpus"].startswith("not run: Ray not installed")


if __name__ == "__main__":  # the check under the simulator, in a child process
    from numba.cuda.simulator.cudadrv import devices
    from test_kernels_cuda import speed_up_simulator

    speed_up_simulator()
    # the simulator reports infinite device memory, which StageWorker.stats cannot count yet
    devices.FakeCUDAContext.get_memory_info = lambda self: (2**40, 2**40)
    sys.exit(main(sys.argv[1:]))
