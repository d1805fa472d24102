"""Backends: tables of kernels (CPU through Numba and BLAS, CUDA through numba.cuda) behind one API.

A backend supplies array allocation and transfer, the three matrix products an MLP layer
needs (nt: a @ b.T, nn: a @ b, tn: a.T @ b), and the elementwise kernels of
workers/kernels. The executor (workers/program.py) only talks to this interface.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class CpuBackend:
    """NumPy arrays; matrix products through NumPy's BLAS, elementwise work through numba.njit."""

    name = "cpu"

    def __init__(self) -> None:
        from workers.kernels import cpu

        self.k = cpu

    # arrays
    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        a = np.empty(shape, dtype)
        a.reshape(-1)[:: max(1, 4096 // a.itemsize)] = 0  # touch every page once: allocate now
        return a

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.zeros(shape, dtype)

    def from_host(self, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return np.ascontiguousarray(a)
        np.copyto(out, a, casting="same_kind")
        return out

    def to_host(self, a: np.ndarray) -> np.ndarray:
        return a

    def flat(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(-1)

    # matrix products
    def matmul_nt(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        np.matmul(a, b.T, out=out)

    def matmul_nn(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        np.matmul(a, b, out=out)

    def matmul_tn(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        np.matmul(a.T, b, out=out)

    # elementwise kernels
    def __getattr__(self, name: str) -> Any:
        return getattr(self.k, name)


class CudaBackend:
    """numba.cuda device arrays and kernels (also runs under NUMBA_ENABLE_CUDASIM=1)."""

    name = "cuda"

    def __init__(self) -> None:
        from numba import cuda

        from workers.kernels import cuda as kcuda

        self.cuda = cuda
        self.k = kcuda

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.cuda.device_array(shape, dtype)

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.cuda.to_device(np.zeros(shape, dtype))

    def from_host(self, a: np.ndarray, out: Any = None) -> Any:
        a = np.ascontiguousarray(a)
        if out is None:
            return self.cuda.to_device(a)
        out.copy_to_device(a.astype(out.dtype, copy=False))
        return out

    def to_host(self, a: Any) -> np.ndarray:
        return a.copy_to_host()

    def flat(self, a: Any) -> Any:
        return a.reshape(a.size)

    # the losses and the norm reduce through a float64 buffer that the executor allocates
    # (so its ledger counts it) and sets here; at least max(rows, 1024) long
    reduction: Any = None

    def _buf(self, n: int) -> Any:
        if self.reduction is None or self.reduction.size < n:
            self.reduction = self.cuda.device_array(max(n, 1024), np.float64)
        return self.reduction

    def softmax_xent_forward(self, o: Any, y: Any, scale: float, probs_out: Any) -> float:
        return self.k.softmax_xent_forward(o, y, scale, probs_out, self._buf(o.shape[0]))

    def mse_forward(self, o: Any, t: Any, scale: float) -> float:
        return self.k.mse_forward(o, t, scale, self._buf(o.shape[0]))

    def sq_norm(self, w: Any) -> float:
        return self.k.sq_norm(w, self._buf(1024))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.k, name)


BACKENDS = {"cpu": CpuBackend, "cuda": CudaBackend}


def get_backend(name: str) -> CpuBackend | CudaBackend:
    from graphpart.errors import ConfigError

    if name not in BACKENDS:
        raise ConfigError(f"device={name!r}; valid: {', '.join(BACKENDS)}")
    return BACKENDS[name]()
