"""The machine the tools measure on: cores, CPU, BLAS, thread pools, other processes' load."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from graphpart.engines import describe_blas


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def blas_info() -> list[dict[str, Any]]:
    """The BLAS libraries loaded, with their thread counts; [] without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "version", "num_threads", "threading_layer", "architecture")
    return [{k: d.get(k) for k in keys} for d in threadpool_info() if d.get("user_api") == "blas"]


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages; None where the OS has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def environment() -> dict[str, Any]:
    """Versions, CPU, cores and the BLAS libraries loaded (with their thread counts)."""
    import numba

    try:
        import torch

        torch_version: str | None = torch.__version__
    except ImportError:
        torch_version = None
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": torch_version,
        "cpu": cpu_model(),
        "cores": cores(),
        "blas": blas_info(),
        "graphpart_blas": describe_blas(),
        "loadavg": loadavg(),
    }


@contextlib.contextmanager
def thread_limits(n: int, with_torch: bool = False) -> Iterator[None]:
    """Every thread pool (BLAS, OpenMP, torch's intra-op if asked) at n threads meanwhile."""
    stack = contextlib.ExitStack()
    with stack:
        try:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(limits=n))
        except ImportError:
            pass
        if with_torch:
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(n)
            stack.callback(torch.set_num_threads, before)
        yield


def time_calls(fn: Callable[[int], object], n: int, warmup: int = 0) -> list[float]:
    """Seconds each of n calls fn(0), ..., fn(n - 1) took, after `warmup` untimed calls."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return times


def machine_busy_s() -> float | None:
    """CPU seconds all processes on this machine have used (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """Share of the machine's CPU time that other processes (and the hypervisor's steal) took
    between start() and stop(): 0 on a quiet machine; None where /proc/stat is missing."""

    def __init__(self) -> None:
        self.value: float | None = None
        self._t0: tuple[float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        busy = machine_busy_s()
        if busy is None:
            return None
        t = os.times()
        return busy, t.user + t.system, time.perf_counter()

    def start(self) -> ForeignLoad:
        self._t0 = self._sample()
        return self

    def stop(self) -> float | None:
        t1 = self._sample()
        if self._t0 is not None and t1 is not None and t1[2] > self._t0[2]:
            busy, own, wall = (b - a for a, b in zip(self._t0, t1, strict=True))
            self.value = max(0.0, busy - own) / (wall * (os.cpu_count() or 1))
        return self.value


def run_delay_s() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU (Linux
    schedstat): what other processes took from us. None where it is not available."""
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9
