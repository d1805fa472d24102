"""Backends: tables of kernels (CPU through Numba and BLAS, CUDA through numba.cuda) behind one API.

A backend supplies array allocation and transfer, the three matrix products an MLP layer
needs (nt: a @ b.T, nn: a @ b, tn: a.T @ b), and the elementwise kernels of
workers/kernels. The executor (workers/program.py) only talks to the `Backend` protocol.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from scipy.linalg import blas as _blas

from graphpart.errors import ConfigError
from workers.kernels import cpu as kcpu

_GEMM = {"f": _blas.sgemm, "d": _blas.dgemm}  # BLAS gemm with beta, by NumPy dtype char

Array = Any  # a NumPy array on the CPU backend, a numba.cuda device array on CUDA


class Backend(Protocol):
    """What the executor and the stage worker call on a device."""

    name: str
    needs_reduction: bool  # True: the executor allocates `reduction` (float64, counted)
    reduction: Array | None

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Array: ...
    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Array: ...
    def from_host(self, a: np.ndarray, out: Array | None = None) -> Array: ...
    def to_host(self, a: Array) -> np.ndarray: ...
    def flat(self, a: Array) -> Array: ...
    def matmul_nt(self, a: Array, b: Array, out: Array) -> None: ...
    def matmul_nn(self, a: Array, b: Array, out: Array) -> None: ...
    def matmul_tn(self, a: Array, b: Array, out: Array, beta: float = 0.0) -> None: ...
    def bias_add(self, m: Array, b: Array, out: Array) -> None: ...
    def act_forward(self, z: Array, out: Array, act: int) -> None: ...
    def bias_act_forward(
        self, m: Array, b: Array, z_out: Array, h_out: Array, act: int
    ) -> None: ...
    def act_backward(self, dh: Array, h: Array, out: Array, act: int) -> None: ...
    def softmax_xent_forward(self, o: Array, y: Array, scale: float, probs_out: Array) -> float: ...
    def softmax_xent_backward(
        self, probs: Array, y: Array, scale: float, do_out: Array
    ) -> None: ...
    def mse_forward(self, o: Array, t: Array, scale: float) -> float: ...
    def mse_backward(self, o: Array, t: Array, scale: float, do_out: Array) -> None: ...
    def sum_rows(self, g: Array, out: Array, accumulate: bool = False) -> None: ...
    def sq_norm(self, w: Array) -> float: ...
    def accumulate(self, dst: Array, src: Array) -> None: ...
    def axpy(self, dst: Array, src: Array, a: float, accumulate: bool) -> None: ...
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


# kernels both devices implement with the same signature (workers/kernels/cpu.py and cuda.py)
SHARED_KERNELS = (
    "bias_add",
    "act_forward",
    "bias_act_forward",
    "act_backward",
    "softmax_xent_backward",
    "mse_backward",
    "sum_rows",
    "accumulate",
    "axpy",
    "sgd_update",
    "adam_update",
)


class CpuBackend:
    """NumPy arrays; matrix products through NumPy's BLAS, elementwise work through numba.njit."""

    name = "cpu"
    needs_reduction = False
    reduction = None
    bias_add = staticmethod(kcpu.bias_add)
    act_forward = staticmethod(kcpu.act_forward)
    bias_act_forward = staticmethod(kcpu.bias_act_forward)
    act_backward = staticmethod(kcpu.act_backward)
    softmax_xent_forward = staticmethod(kcpu.softmax_xent_forward)
    softmax_xent_backward = staticmethod(kcpu.softmax_xent_backward)
    mse_forward = staticmethod(kcpu.mse_forward)
    mse_backward = staticmethod(kcpu.mse_backward)
    sum_rows = staticmethod(kcpu.sum_rows)
    sq_norm = staticmethod(kcpu.sq_norm)
    accumulate = staticmethod(kcpu.accumulate)
    axpy = staticmethod(kcpu.axpy)
    sgd_update = staticmethod(kcpu.sgd_update)
    adam_update = staticmethod(kcpu.adam_update)

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

    def matmul_tn(self, a: np.ndarray, b: np.ndarray, out: np.ndarray, beta: float = 0.0) -> None:
        """out = a.T @ b + beta * out. beta=1 accumulates a weight gradient in the gemm itself
        (BLAS's C = alpha AB + beta C, through SciPy's wrapper: NumPy has no beta), so no
        temporary is written and added afterwards."""
        if beta == 0.0:
            np.matmul(a.T, b, out=out)
            return
        gemm = _GEMM.get(out.dtype.char)
        if gemm is None or not (a.flags.c_contiguous and b.flags.c_contiguous):
            out *= beta
            out += a.T @ b  # not a BLAS type or layout: the plain way
            return
        # C-ordered out (o x i) is the Fortran-ordered out.T (i x o) = b.T (i x n) @ a (n x o)
        # + beta out.T, with b.T and a.T Fortran-ordered views: written in place, no copies
        gemm(1.0, b.T, a.T, beta=beta, c=out.T, trans_b=1, overwrite_c=1)


class CudaBackend:
    """numba.cuda device arrays and kernels (also runs under NUMBA_ENABLE_CUDASIM=1).

    The CUDA kernel module is imported when a CUDA backend is made, not with this module, so
    that CPU-only runs never load numba.cuda.
    """

    name = "cuda"
    needs_reduction = True
    # the losses and the norm reduce through a float64 buffer that the executor allocates
    # (so its ledger counts it) and sets here; at least max(rows, 1024) long
    reduction: Array | None = None

    def __init__(self) -> None:
        from numba import cuda

        from workers.kernels import cuda as kcuda  # lazy: CUDA

        self.cuda, self.k = cuda, kcuda
        for name in (*SHARED_KERNELS, "matmul_nt", "matmul_nn", "matmul_tn"):
            setattr(self, name, getattr(kcuda, name))

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Array:
        return self.cuda.device_array(shape, dtype)

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Array:
        return self.cuda.to_device(np.zeros(shape, dtype))

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

    def _buf(self, n: int) -> Array:
        if self.reduction is None or self.reduction.size < n:
            self.reduction = self.cuda.device_array(max(n, 1024), np.float64)
        return self.reduction

    def softmax_xent_forward(self, o: Array, y: Array, scale: float, probs_out: Array) -> float:
        return self.k.softmax_xent_forward(o, y, scale, probs_out, self._buf(o.shape[0]))

    def mse_forward(self, o: Array, t: Array, scale: float) -> float:
        return self.k.mse_forward(o, t, scale, self._buf(o.shape[0]))

    def sq_norm(self, w: Array) -> float:
        return self.k.sq_norm(w, self._buf(1024))


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
