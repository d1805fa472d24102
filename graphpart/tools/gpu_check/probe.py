"""What the machine offers: the CUDA device numba sees (or the simulator), and the peers."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
from typing import Any


def simulated() -> bool:
    """Whether numba runs CUDA kernels in its simulator (NUMBA_ENABLE_CUDASIM=1)."""
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    fields = "name,driver_version,memory.total,compute_cap"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"
    return out.stdout.strip() or out.stderr.strip() or None


def device_info() -> dict[str, Any]:
    """The GPU numba would use, the software around it, and whether it is the simulator."""
    from numba import cuda

    info: dict[str, Any] = {
        "simulated": simulated(),
        "host": platform.node(),
        "python": platform.python_version(),
        "numba": _version("numba"),
        "numba_cuda": _version("numba-cuda"),
        "nvidia_smi": _nvidia_smi(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if info["simulated"]:
        info["name"] = "numba CUDA simulator (no GPU)"
        return info
    try:
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        free, total = cuda.current_context().get_memory_info()
        info.update(
            name=name,
            compute_capability=list(dev.compute_capability),
            multiprocessors=int(dev.MULTIPROCESSOR_COUNT),
            memory_total_gib=total / 2**30,
            memory_free_gib=free / 2**30,
        )
        ver = cuda.runtime.get_version()
        info["cuda_runtime"] = ".".join(str(v) for v in ver)
        drv = getattr(cuda.cudadrv.driver, "driver", None)
        if drv is not None and hasattr(drv, "get_version"):
            info["cuda_driver"] = ".".join(str(v) for v in drv.get_version())
    except Exception as e:  # noqa: BLE001 - reported, not fatal: the summary says what failed
        info["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
    return info


def cupy_status() -> tuple[Any, str]:
    """(the cupy module, "ok") when CuPy imports and sees a GPU; else (None, why not)."""
    try:
        import cupy
    except ImportError:
        return None, "not installed"
    except Exception as e:  # noqa: BLE001 - a broken CuPy install
        return None, f"does not import ({type(e).__name__})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "installed, but sees no GPU"
    except Exception as e:  # noqa: BLE001 - no driver
        return None, f"installed, but sees no GPU ({type(e).__name__})"
    return cupy, "ok"


def torch_status() -> tuple[Any, str]:
    """(the torch module, "ok") when PyTorch imports with CUDA and a GPU; else (None, why not)."""
    try:
        import torch
    except ImportError:
        return None, "not installed"
    except Exception as e:  # noqa: BLE001 - a broken install
        return None, f"does not import ({type(e).__name__})"
    if not torch.cuda.is_available():
        return None, f"installed ({torch.__version__}), but without CUDA or a GPU"
    return torch, "ok"
