"""The Ray actor: a thin shell around StageWorker that pins BLAS threads and names failures."""

from __future__ import annotations

import os
from typing import Any

import ray

BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def blas_env(threads: int) -> dict[str, str]:
    """Environment for a worker process whose BLAS may use `threads` threads."""
    return dict.fromkeys(BLAS_ENV, str(int(threads)))


@ray.remote
class StageActor:
    def __init__(self, blas_threads: int, *args: Any, **kwargs: Any) -> None:
        from threadpoolctl import threadpool_limits

        from workers.stage import StageWorker

        threadpool_limits(int(blas_threads))  # in case BLAS was loaded before the env applied
        self.threads = int(blas_threads)
        self.worker = StageWorker(*args, **kwargs)

    def call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.worker, method)(*args)
        except Exception as e:
            what = method
            if method in ("forward", "backward") and args:
                what = f"{method} of micro-batch {args[0]}"
            raise RuntimeError(
                f"stage {self.worker.index} ({os.uname().nodename}, pid {os.getpid()}) failed in "
                f"{what}: {type(e).__name__}: {e}") from e

    def info(self) -> dict[str, Any]:
        from threadpoolctl import threadpool_info

        return {"pid": os.getpid(), "node": os.uname().nodename, "threads": self.threads,
                "blas": [(i.get("internal_api"), i.get("num_threads")) for i in threadpool_info()]}
