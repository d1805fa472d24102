"""The Ray actors: thin shells around StageWorker that pin BLAS threads and name failures."""

from __future__ import annotations

import os
from typing import Any

import ray

BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def blas_env(threads: int) -> dict[str, str]:
    """Environment for a worker process whose BLAS may use `threads` threads."""
    return dict.fromkeys(BLAS_ENV, str(int(threads)))


class _Shell:
    def __init__(self, blas_threads: int, *args: Any, **kwargs: Any) -> None:
        from threadpoolctl import threadpool_limits

        from workers.stage import StageWorker

        threadpool_limits(int(blas_threads))  # in case BLAS was loaded before the env applied
        self.threads = int(blas_threads)
        self.worker = StageWorker(*args, **kwargs)

    def _failure(self, what: str, e: BaseException) -> RuntimeError:
        return RuntimeError(
            f"stage {self.worker.index} ({os.uname().nodename}, pid {os.getpid()}) failed in "
            f"{what}: {type(e).__name__}: {e}"
        )

    def call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.worker, method)(*args)
        except Exception as e:
            what = method
            if method in ("forward", "backward") and args:
                what = f"{method} of micro-batch {args[0]}"
            raise self._failure(what, e) from e

    def info(self) -> dict[str, Any]:
        from threadpoolctl import threadpool_info

        return {
            "pid": os.getpid(),
            "node": os.uname().nodename,
            "threads": self.threads,
            "blas": [(i.get("internal_api"), i.get("num_threads")) for i in threadpool_info()],
        }


@ray.remote
class StageActor(_Shell):
    """A stage answering one call per action (`call("forward", m, ...)`): RayEngine's."""


@ray.remote(concurrency_groups={"inbox": 1})
class PushStageActor(_Shell):
    """A stage that runs a whole step per call (workers/push.py) and pushes its boundary
    tensors straight to its neighbours' `deliver`; deliveries run on their own thread (the
    "inbox" group) while `run_step` waits for them on the default one."""

    def __init__(self, blas_threads: int, *args: Any, **kwargs: Any) -> None:
        from workers.push import Inbox

        super().__init__(blas_threads, *args, **kwargs)
        self.inbox = Inbox()
        self.prev: Any = None
        self.next: Any = None

    def connect(self, prev: Any, nxt: Any) -> None:
        self.prev, self.next = prev, nxt

    @ray.method(concurrency_group="inbox")
    def deliver(self, key: tuple[int, str, int], value: Any) -> None:
        self.inbox.put(key, value)

    @ray.method(concurrency_group="inbox")
    def abort(self, step: int, why: str) -> None:
        self.inbox.fail(step, why)

    def run_step(
        self,
        step: int,
        actions: list[tuple[str, int]],
        x: Any,
        y: Any,
        rows: list[slice],
        scale: float,
        update: bool,
        timeout_s: float = 600.0,
    ) -> dict[str, float]:
        from workers.push import ActionFailed, NeighbourFailed, run_step

        nxt, prev = self.next, self.prev
        try:
            return run_step(
                self.worker,
                step,
                actions,
                self.inbox,
                x=x,
                y=y,
                rows=rows,
                scale=scale,
                update=update,
                timeout_s=timeout_s,
                send_forward=None if nxt is None else lambda k, a: nxt.deliver.remote(k, a),
                send_backward=None if prev is None else lambda k, a: prev.deliver.remote(k, a),
            )
        except NeighbourFailed as e:
            raise RuntimeError(f"stage {self.worker.index} stopped: {e}") from None
        except Exception as e:
            cause = e.cause if isinstance(e, ActionFailed) else e
            err = self._failure(e.what if isinstance(e, ActionFailed) else "run_step", cause)
            for peer in (prev, nxt):  # wake the neighbours waiting on this stage
                if peer is not None:
                    peer.abort.remote(step, str(err))
            raise err from cause
