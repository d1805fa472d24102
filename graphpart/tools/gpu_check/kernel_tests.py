"""The repository's CUDA tests run for real: pytest in a child with GRAPHPART_CUDA_TESTS=gpu.

That variable makes tests/test_kernels_cuda.py launch its checks on the GPU instead of under
Numba's simulator (and fail if there is none). The counts come from pytest's JUnit XML.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CUDA_TESTS = ("tests/test_kernels_cuda.py", "tests/test_backends.py")
GPU_MODE = "GRAPHPART_CUDA_TESTS"


def repo_root() -> Path | None:
    """The checkout this package runs from (it has tests/), or None (an installed copy)."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "tests" / "conftest.py").is_file() else None


def run_cuda_tests(
    files: Sequence[str] = CUDA_TESTS, select: str = "", gpu: bool = True, timeout: float = 240
) -> dict[str, Any]:
    """pytest on `files` (`select`: a -k expression) on the GPU (or, gpu=False, under the
    simulator); counts of passed, failed, errors and skipped, and the failures' names."""
    root = repo_root()
    if root is None:
        return {"status": "not run: no tests/ next to this package (run from a checkout)"}
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if gpu:
        env[GPU_MODE] = "gpu"
    else:
        env.pop(GPU_MODE, None)
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
        cmd += [*files, *(["-k", select] if select else [])]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return {"status": f"timed out after {timeout:.0f} s", "command": " ".join(cmd[2:])}
        out: dict[str, Any] = {
            "command": " ".join(["pytest", *cmd[3:]]).replace(f"--junitxml={xml} ", ""),
            "mode": "gpu" if gpu else "simulator",
            "returncode": proc.returncode,
            "wall_s": time.perf_counter() - t0,
        }
        if not xml.is_file():
            out["status"] = "pytest wrote no report"
            out["tail"] = (proc.stdout + proc.stderr)[-2000:]
            return out
        out.update(_counts(xml))
    out["status"] = "passed" if proc.returncode == 0 and out["passed"] > 0 else "FAILED"
    if out["status"] != "passed":
        out["tail"] = (proc.stdout + proc.stderr)[-2000:]
    return out


def _counts(xml: Path) -> dict[str, Any]:
    root = ET.parse(xml).getroot()
    cases = list(root.iter("testcase"))
    failed, errors, skipped = [], [], []
    for c in cases:
        name = f"{c.get('classname', '')}::{c.get('name', '')}"
        if c.find("failure") is not None:
            failed.append(name)
        elif c.find("error") is not None:
            errors.append(name)
        elif c.find("skipped") is not None:
            skipped.append(name)
    bad = len(failed) + len(errors) + len(skipped)
    return {
        "passed": len(cases) - bad,
        "failed": failed,
        "errors": errors,
        "skipped": skipped,
    }
