"""The whole check: sections in order, each caught and reported, then the verdict per criterion."""

from __future__ import annotations

import datetime as dt
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from graphpart.engines import start_ray, stop_ray
from graphpart.tools.gpu_check.correctness import Pipeline, check_float64
from graphpart.tools.gpu_check.gemm_bench import bench_gemm
from graphpart.tools.gpu_check.kernel_tests import run_cuda_tests
from graphpart.tools.gpu_check.probe import device_info, simulated
from graphpart.tools.gpu_check.step_bench import bench_step
from graphpart.tools.gpu_check.training import compare_training

SYNTHETIC = (784, 1024, 1024, 1024, 10)  # the synthetic model
DIGITS = (64, 64, 64, 64, 10)  # the digits default (graphpart/configs/digits.toml)
BUDGET_S = 300.0  # the check should end within 5 minutes on a GPU machine
GEMM_BAR = 0.30  # the kernel's speed as a fraction of cuBLAS's at the largest size


@dataclass(frozen=True)
class CheckOptions:
    """What to run, at which sizes. The defaults are the GPU check; `quick()` fits the
    simulator (tiny shapes, seconds)."""

    tests: bool = True
    tests_select: str = ""  # a pytest -k expression
    correctness: bool = True
    training: bool = True
    ray: bool = True  # two stages as Ray actors sharing the GPU(s)
    step: bool = True
    gemm: bool = True
    model: tuple[int, ...] = SYNTHETIC
    digits_model: tuple[int, ...] = DIGITS
    check_batch: int = 256
    step_batches: tuple[int, ...] = (256, 4096)
    gemm_sizes: tuple[int, ...] = (1024, 2048, 4096)
    repeats: int = 20
    digits_training: bool = True  # the digits default, 30 epochs (no tiny version exists)
    synthetic_overrides: dict[str, Any] = field(
        default_factory=lambda: {
            "data.n_samples": 20000,
            "data.n_features": SYNTHETIC[0],
            "data.n_classes": SYNTHETIC[-1],
            "model.hidden": list(SYNTHETIC[1:-1]),
            "train.epochs": 1,
            "train.log_every": 0,
            "pipeline.microbatches": 4,
        }
    )

    @classmethod
    def quick(cls, **kw: Any) -> CheckOptions:
        """Tiny shapes: the whole check in the simulator in under a minute."""
        tiny = (6, 5, 4, 3)
        base: dict[str, Any] = dict(
            tests_select="test_imports_without_gpu",
            ray=False,
            model=tiny,
            digits_model=(64, 4, 10),
            check_batch=8,
            step_batches=(8,),
            gemm_sizes=(4, 12),
            repeats=1,
            digits_training=False,
            synthetic_overrides={
                "data.n_samples": 40,
                "data.n_features": tiny[0],
                "data.n_classes": tiny[-1],
                "model.hidden": list(tiny[1:-1]),
                "train.epochs": 1,
                "train.batch_size": 16,
                "train.log_every": 0,
                "pipeline.microbatches": 2,
            },
        )
        return cls(**{**base, **kw})


def _section(out: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    t = time.perf_counter()
    try:
        out[name] = fn()
    except Exception as e:  # noqa: BLE001 - one failing section must not hide the others
        line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        out[name] = {
            "error": f"{type(e).__name__}: {line}",
            "traceback": traceback.format_exc()[-3000:],
        }
    out.setdefault("section_s", {})[name] = time.perf_counter() - t


def _ray_up(sim: bool) -> bool:
    """Start Ray for the pipeline checks; True if this call started it. Under the simulator
    Ray is told of one GPU (the simulator is one) and its workers run the simulator too."""
    import ray

    if ray.is_initialized():
        return False
    if not sim:
        return start_ray()
    return start_ray(
        num_cpus=2, num_gpus=1, runtime_env={"env_vars": {"NUMBA_ENABLE_CUDASIM": "1"}}
    )


def _ray_importable() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _correctness(opts: CheckOptions) -> list[dict[str, Any]]:
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    rows = []
    dx, dy = load_digits(return_X_y=True)
    n = opts.check_batch
    dm = opts.digits_model
    rows.append(check_float64(dm, dx[:n, : dm[0]] / 16.0, dy[:n] % dm[-1]))
    m = opts.model
    x = rng.standard_normal((n, m[0]))
    y = rng.integers(0, m[-1], n)
    rows.append(check_float64(m, x, y))
    if len(m) > 2:
        rows.append(check_float64(m, x, y, Pipeline(2, 2, "inprocess")))
    if opts.ray and len(m) > 2:
        rows.append(check_float64(m, x, y, Pipeline(2, 2, "shm")))
    return rows


def _training(opts: CheckOptions) -> dict[str, Any]:
    from importlib import resources

    out = {"digits": compare_training(None, {})} if opts.digits_training else {}
    with resources.as_file(resources.files("graphpart") / "configs" / "synthetic.toml") as p:
        out["synthetic"] = compare_training(
            str(p), opts.synthetic_overrides, gpu_stages=2 if opts.ray else 1
        )
    return out


def verdict(report: dict[str, Any], sim: bool) -> dict[str, str]:
    """Per criterion of issue 13: "pass", "FAIL ..." or "not run: ..."."""
    v: dict[str, str] = {}
    t = report.get("tests")
    if not isinstance(t, dict) or "status" not in t:
        v["cuda_tests"] = "not run" if t is None else f"FAIL ({t.get('error', 'no result')})"
    else:
        v["cuda_tests"] = "pass" if t["status"] == "passed" else f"FAIL ({t['status']})"
        if t.get("mode") == "simulator":
            v["cuda_tests"] += " (simulator, not a GPU)"
    c = report.get("correctness")
    if isinstance(c, list) and c:
        bad = [r["pipeline"] for r in c if not r["passed"]]
        v["float64_vs_cpu_1e-10"] = "pass" if not bad else f"FAIL ({'; '.join(bad)})"
    else:
        v["float64_vs_cpu_1e-10"] = _missing(c)
    if isinstance(c, list) and any("shm" in r["pipeline"] for r in c):
        ok = all(r["passed"] for r in c if "shm" in r["pipeline"])
        v["ray_stages_on_gpus"] = "pass" if ok else "FAIL (see correctness)"
    elif isinstance(report.get("ray"), str):
        v["ray_stages_on_gpus"] = f"not run: Ray {report['ray']}"
    else:
        v["ray_stages_on_gpus"] = "not run"
    g = report.get("gemm")
    if isinstance(g, dict) and g.get("sizes"):
        last = g["sizes"][-1]
        r = last.get("ratio_nn")
        if sim:
            v["gemm_vs_cublas"] = "not measured: simulator"
        elif r is None:
            v["gemm_vs_cublas"] = f"not measured: cuBLAS {g.get('cublas_status')}"
        else:
            ok = "pass" if r >= GEMM_BAR else "FAIL"
            v["gemm_vs_cublas"] = f"{ok} ({r:.0%} of cuBLAS at n={last['n']}; bar {GEMM_BAR:.0%})"
    else:
        v["gemm_vs_cublas"] = _missing(g)
    tr = report.get("training")
    if isinstance(tr, dict) and "error" not in tr and "digits" not in tr:
        v["digits_accuracy"] = "not run (--quick: no tiny digits run)"
    elif isinstance(tr, dict) and "digits" in tr:
        d = tr["digits"]
        acc = f"GPU {d['gpu']['test_accuracy']:.4f}, CPU {d['cpu']['test_accuracy']:.4f}"
        v["digits_accuracy"] = f"{'pass' if d['passed'] else 'FAIL'} ({acc})"
    else:
        v["digits_accuracy"] = _missing(tr)
    if isinstance(tr, dict) and "synthetic" in tr:
        d = tr["synthetic"]
        acc = f"GPU {d['gpu']['test_accuracy']:.4f}, CPU {d['cpu']['test_accuracy']:.4f}"
        v["synthetic_accuracy"] = f"{'pass' if d['passed'] else 'FAIL'} ({acc})"
    return v


def _missing(section: Any) -> str:
    if section is None:
        return "not run"
    if isinstance(section, dict) and "error" in section:
        return f"FAIL ({section['error']})"
    return "FAIL (no result)"


def run_gpu_check(opts: CheckOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the sections `opts` asks for; the report (JSON-able), with a verdict."""
    t0 = time.perf_counter()
    sim = simulated()
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "options": asdict(opts),
    }
    log("gpu-check: probing the device")
    _section(report, "device", device_info)
    if opts.ray and not _ray_importable():
        report["ray"] = "not installed: the checks on Ray actors were left out"
        opts = replace(opts, ray=False)
    started = False
    try:
        if opts.tests:
            log("gpu-check: the CUDA tests" + (" (simulator)" if sim else " on the GPU"))
            _section(report, "tests", lambda: run_cuda_tests(select=opts.tests_select, gpu=not sim))
        if opts.ray and (opts.correctness or opts.training):
            started = _ray_up(sim)
        if opts.correctness:
            log("gpu-check: float64 gradients and steps against the CPU reference")
            _section(report, "correctness", lambda: _correctness(opts))
        if opts.training:
            log("gpu-check: training on the GPU and on the CPU")
            _section(report, "training", lambda: _training(opts))
        if opts.step:
            log("gpu-check: one float32 training step, graphpart vs CuPy / PyTorch")
            _section(
                report,
                "step",
                lambda: [bench_step(opts.model, b, opts.repeats) for b in opts.step_batches],
            )
        if opts.gemm:
            log("gpu-check: the gemm kernel vs cuBLAS")
            sizes = opts.gemm_sizes
            _section(report, "gemm", lambda: bench_gemm(sizes, opts.repeats, max(sizes)))
    finally:
        if started:
            stop_ray()
    report["verdict"] = verdict(report, sim)
    report["elapsed_s"] = time.perf_counter() - t0
    report["within_budget"] = report["elapsed_s"] <= BUDGET_S
    return report
