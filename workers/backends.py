"""Backends: a device's arrays and kernel table (CPU: Numba and BLAS; CUDA: numba.cuda).

A backend supplies array allocation and transfer, the optimizer kernels, and `kernels`: the
table from the op registry's kernel keys (graphpart.ir.ops) to this device's implementations
(workers/kernels/cpu.py and cuda.py, `KERNELS`). The executor (workers/program.py) looks its
kernels up there once, when it is built; it only talks to the `Backend` protocol.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from graphpart.errors import ConfigError
from graphpart.ir.sizes import ALIGN, allocated
from workers.kernels import cpu as kcpu

Array = Any  # a NumPy array on the CPU backend, a numba.cuda device array on CUDA
Kernel = Callable[..., Any]


class Backend(Protocol):
    """What the executor and the stage worker call on a device."""

    name: str
    needs_reduction: bool  # True: the executor allocates `reduction` (float64, counted)
    reduction: Array | None
    kernels: Mapping[str, Kernel]  # kernel key (the op registry's) -> this device's kernel

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Array: ...
    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Array: ...
    def from_host(self, a: np.ndarray, out: Array | None = None) -> Array: ...
    def to_host(self, a: Array) -> np.ndarray: ...
    def flat(self, a: Array) -> Array: ...
    def sgd_update(
        self, w: Array, g: Array, v: Array, lr: float, momentum: float, weight_decay: float
    ) -> None: ...
    def adam_update(
        self,
        w: Array,
        g: Array,
        m: Array,
        v: Array,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        step: int,
        weight_decay: float,
    ) -> None: ...


class CpuBackend:
    """NumPy arrays; matrix products through NumPy's BLAS, elementwise work through numba.njit."""

    name = "cpu"
    needs_reduction = False
    reduction = None
    kernels: Mapping[str, Kernel] = MappingProxyType(kcpu.KERNELS)
    sgd_update = staticmethod(kcpu.sgd_update)
    adam_update = staticmethod(kcpu.adam_update)

    # arrays: each on a 64-byte boundary, its allocation graphpart.ir.sizes.allocated's bytes
    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        a = host_array(shape, dtype)
        a.reshape(-1)[:: max(1, 4096 // a.itemsize)] = 0  # touch every page once: allocate now
        return a

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return host_array(shape, dtype, zero=True)

    def from_host(self, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return np.ascontiguousarray(a)
        np.copyto(out, a, casting="same_kind")
        return out

    def to_host(self, a: np.ndarray) -> np.ndarray:
        return a

    def flat(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(-1)


def host_array(shape: tuple[int, ...], dtype: Any, zero: bool = False) -> np.ndarray:
    """A host array of `shape` starting on an ALIGN-byte boundary: a view of a byte buffer of
    `allocated` bytes (zeroed with `zero`), which NumPy reports to tracemalloc."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = (np.zeros if zero else np.empty)(allocated(size), np.uint8)
    skip = -raw.ctypes.data % ALIGN
    return raw[skip : skip + size].view(dtype).reshape(shape)


class CudaBackend:
    """numba.cuda device arrays and kernels (also runs under NUMBA_ENABLE_CUDASIM=1).

    The CUDA kernel module is imported when a CUDA backend is made, not with this module, so
    that CPU-only runs never load numba.cuda.
    """

    name = "cuda"
    needs_reduction = True

    def __init__(self) -> None:
        from numba import cuda

        from workers.kernels import cuda as kcuda  # lazy: CUDA

        self.cuda, self.k = cuda, kcuda
        for name in ("sgd_update", "adam_update", "matmul_nt", "matmul_nn", "matmul_tn"):
            setattr(self, name, getattr(kcuda, name))
        self._red = _Reduction(cuda)
        self.kernels: Mapping[str, Kernel] = MappingProxyType(
            {
                k: self._red.appended(f, kcuda.REDUCTIONS[k]) if k in kcuda.REDUCTIONS else f
                for k, f in kcuda.KERNELS.items()
            }
        )

    @property
    def reduction(self) -> Array | None:
        """The float64 buffer the losses and norms reduce through: the executor allocates it
        (so its ledger counts it) and sets it here; at least max(rows, 1024) long."""
        return self._red.array

    @reduction.setter
    def reduction(self, array: Array | None) -> None:
        self._red.array = array

    # arrays: as the host's, each an allocation of graphpart.ir.sizes.allocated's bytes (the
    # device's own allocations start on a 256-byte boundary)
    def empty(self, shape: tuple[int, ...], dtype: Any) -> Array:
        dtype = np.dtype(dtype)
        n = math.prod(shape)
        whole = self.cuda.device_array(allocated(n * dtype.itemsize) // dtype.itemsize, dtype)
        return whole[:n].reshape(shape)

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Array:
        a = self.empty(shape, dtype)
        a.copy_to_device(np.zeros(shape, dtype))
        return a

    def from_host(self, a: np.ndarray, out: Array | None = None) -> Array:
        a = np.ascontiguousarray(a)
        if out is None:
            return self.cuda.to_device(a)
        out.copy_to_device(a.astype(out.dtype, copy=False))
        return out

    def to_host(self, a: Array) -> np.ndarray:
        return a.copy_to_host()

    def flat(self, a: Array) -> Array:
        return a.reshape(a.size)


class _Reduction:
    """CUDA's reduction buffer, shared by the backend and its table's reducing kernels (which
    hold this, not the backend: no reference cycle)."""

    def __init__(self, cuda: Any) -> None:
        self.cuda, self.array = cuda, None

    def buffer(self, n: int) -> Array:
        if self.array is None or self.array.size < n:
            self.array = self.cuda.device_array(max(n, 1024), np.float64)
        return self.array

    def appended(self, kernel: Kernel, need: Callable[[tuple], int]) -> Kernel:
        """`kernel` with a buffer of at least need(args) entries appended to its arguments."""

        def call(*args: Any) -> Any:
            return kernel(*args, self.buffer(need(args)))

        return call


BACKENDS: dict[str, type[CpuBackend] | type[CudaBackend]] = {"cpu": CpuBackend, "cuda": CudaBackend}
DEVICES = tuple(BACKENDS)


def cuda_problem() -> str | None:
    """Why numba cannot use a CUDA device on this machine, in one line; None when it can
    (a GPU with its driver and libNVVM, or the simulator, NUMBA_ENABLE_CUDASIM=1)."""
    from numba import cuda  # numba.cuda loads only when a CUDA device is asked for

    try:
        if cuda.is_available():
            return None
        reason = cuda.cuda_error()
    except Exception as exc:  # numba's driver errors are not all CudaSupportError
        reason = str(exc) or type(exc).__name__
    lines = [line.strip() for line in str(reason or "").splitlines()]
    lines = [line for line in lines if line and line != "Error at driver init:"]
    if not lines:
        return "numba sees no usable GPU, or no libNVVM to compile for one"
    return lines[0].removeprefix("Error at driver init:").strip().rstrip(".")


def check_device(name: str) -> None:
    """Refuse, as a one-line ConfigError, a device name that is unknown or not usable here."""
    if name not in BACKENDS:
        raise ConfigError(f"device={name!r}; valid: {', '.join(BACKENDS)}")
    if name == "cuda":
        problem = cuda_problem()
        if problem is not None:
            raise ConfigError(
                f"pipeline.device='cuda': no CUDA device was found ({problem}); check with "
                "nvidia-smi, or use --device cpu"
            )


def get_backend(name: str) -> Backend:
    check_device(name)
    return BACKENDS[name]()
