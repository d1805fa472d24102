"""The BLAS behind the CPU products: NumPy's OpenBLAS, or Intel's MKL where it is installed and
measured faster, chosen per product shape once per machine.

Why two: on Intel CPUs MKL runs the skinny products of a pipeline stage (64-row micro-batches
against 1024-wide weights) 15-35% faster than OpenBLAS on one thread, and loses on tiny ones
(a 10-wide output layer), where OpenBLAS's lower call overhead wins. PyTorch, the peer users
compare with, uses MKL. So each product shape (kind, operand shapes, dtype) that runs on one
thread (a pipeline stage's case) is timed once with both, alternating, and the faster is kept:
in memory, and in a JSON file in the user's cache folder that every process on the machine
reads, so that all the stages of a run (and every later run) use the same BLAS for the same
product and stay bit-identical.

`GRAPHPART_BLAS` chooses: `auto` (the default: calibrated as above where MKL is installed,
OpenBLAS alone otherwise), `openblas`, or `mkl` (every product it can take).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from scipy.linalg import blas as _scipy_blas
from threadpoolctl import ThreadpoolController

__all__ = [
    "MODES",
    "Mkl",
    "cache_file",
    "choice",
    "describe",
    "gemm",
    "mkl",
    "mode",
    "provider_of",
    "providers",
]

MODES = ("auto", "openblas", "mkl")
_ENV = "GRAPHPART_BLAS"
_TRANS = {"nt": (False, True), "nn": (False, False), "tn": (True, False)}  # kind -> (a.T, b.T)
_GEMM = {"f": _scipy_blas.sgemm, "d": _scipy_blas.dgemm}  # SciPy's gemm with beta, by dtype char
_MARGIN = 0.97  # MKL is kept only where it is at least 3% faster: a tie stays with OpenBLAS

Gemm = Callable[[str, np.ndarray, np.ndarray, np.ndarray, float], None]


def mode() -> str:
    """`GRAPHPART_BLAS`, checked: one of MODES."""
    m = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if m not in MODES:
        raise ValueError(f"{_ENV}={m!r}: must be one of {', '.join(MODES)}")
    return m


# --- the two providers ----------------------------------------------------------------------


def _openblas(kind: str, a: np.ndarray, b: np.ndarray, out: np.ndarray, beta: float) -> None:
    """out = op(a) @ op(b) + beta out through NumPy: np.matmul, or where beta is not 0 its
    own OpenBLAS's cblas (SciPy's gemm only where that cannot be found: SciPy's is a second
    OpenBLAS, whose thread pool spins beside NumPy's on the same cores)."""
    ta, tb = _TRANS[kind]
    a_ = a.T if ta else a
    b_ = b.T if tb else b
    if beta == 0.0:
        np.matmul(a_, b_, out=out)
        return
    if _CBLAS is not None and _CBLAS.takes(a, b, out):  # NumPy's own OpenBLAS, in place
        _CBLAS.gemm(kind, a, b, out, beta)
        return
    gemm = _GEMM.get(out.dtype.char)
    if kind != "tn" or gemm is None or not (a.flags.c_contiguous and b.flags.c_contiguous):
        out *= beta
        out += a_ @ b_  # not a BLAS type or layout: the plain way
        return
    # C-ordered out (o x i) is the Fortran-ordered out.T (i x o) = b.T (i x n) @ a (n x o)
    # + beta out.T, with b.T and a.T Fortran-ordered views: written in place, no copies
    gemm(1.0, b.T, a.T, beta=beta, c=out.T, trans_b=1, overwrite_c=1)


class Cblas:
    """A library's cblas_sgemm / cblas_dgemm (`names`: their symbols; `index`: its integer
    type, 64-bit for an ILP64 build) through ctypes: row-major products whose operands have
    contiguous rows and any leading dimension, with beta, in place."""

    _ROW_MAJOR, _NO_TRANS, _TRANS_ = 101, 111, 112

    def __init__(self, lib: ctypes.CDLL, names: tuple[str, str], index: type = ctypes.c_int):
        p, e, i = ctypes.c_void_p, ctypes.c_int, index
        self._fn = {}
        for char, name, scalar in zip("fd", names, (ctypes.c_float, ctypes.c_double), strict=True):
            fn = getattr(lib, name)
            fn.argtypes = [e, e, e, i, i, i, scalar, p, i, p, i, scalar, p, i]
            fn.restype = None
            self._fn[char] = fn

    def takes(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
        """Whether these operands are a layout cblas takes without copies: 2-D row-major
        arrays of one float dtype, each row contiguous (a column block of a C-contiguous
        array is one: its leading dimension is the whole row's)."""
        return (
            out.dtype.char in self._fn
            and a.dtype == out.dtype == b.dtype
            and all(_ld(x) is not None for x in (a, b, out))
        )

    def gemm(self, kind: str, a: np.ndarray, b: np.ndarray, out: np.ndarray, beta: float) -> None:
        """out = op(a) @ op(b) + beta out (row-major cblas); other layouts go to OpenBLAS."""
        if not self.takes(a, b, out):
            _openblas(kind, a, b, out, beta)
            return
        ta, tb = _TRANS[kind]
        m, n = out.shape
        k = a.shape[0] if ta else a.shape[1]
        if m == 0 or n == 0:
            return
        if k == 0:  # no products to add: C = beta C, and BLAS's beta = 0 ignores C's old values
            if beta == 0.0:
                out.fill(0)
            else:
                out *= beta
            return
        self._fn[out.dtype.char](
            self._ROW_MAJOR,
            self._TRANS_ if ta else self._NO_TRANS,
            self._TRANS_ if tb else self._NO_TRANS,
            m,
            n,
            k,
            1.0,
            a.ctypes.data,
            _ld(a),
            b.ctypes.data,
            _ld(b),
            beta,
            out.ctypes.data,
            _ld(out),
        )


class Mkl(Cblas):
    """cblas_sgemm / cblas_dgemm of MKL's single dynamic library (libmkl_rt), through ctypes."""

    def __init__(self, lib: ctypes.CDLL, path: str, sequential: bool) -> None:
        self.path = path
        if sequential:  # before any other MKL call: no OpenMP runtime is loaded at all
            lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
            lib.MKL_Set_Threading_Layer(_SEQUENTIAL)
        super().__init__(lib, ("cblas_sgemm", "cblas_dgemm"))
        version = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(version, 256)
        self.version = version.value.decode(errors="replace").strip()


def _ld(x: np.ndarray) -> int | None:
    """The leading dimension (elements from a row to the next) of a 2-D row-major array whose
    rows are contiguous; None for any other layout."""
    if x.ndim != 2:
        return None
    if x.flags.c_contiguous:
        return max(int(x.shape[1]), 1)
    item = x.itemsize
    row, col = x.strides
    if col != item or row % item or row < x.shape[1] * item:
        return None
    return row // item


def _numpy_cblas() -> Cblas | None:
    """The cblas of the OpenBLAS NumPy runs its products on (its wheels build it ILP64, with
    prefixed symbols), for the row-strided operands SciPy's gemm would copy; None where it
    cannot be found."""
    import numpy.linalg  # noqa: F401 - loads NumPy's BLAS

    for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        with contextlib.suppress(OSError):
            dll = ctypes.CDLL(lib.filepath)
            for pre, post, index in (
                ("scipy_", "64_", ctypes.c_int64),
                ("", "64_", ctypes.c_int64),
                ("", "", ctypes.c_int),
            ):
                names = (f"{pre}cblas_sgemm{post}", f"{pre}cblas_dgemm{post}")
                if all(hasattr(dll, n) for n in names):
                    return Cblas(dll, names, index)
    return None


_CBLAS = _numpy_cblas()


_SEQUENTIAL = 1  # MKL_THREADING_SEQUENTIAL


def _load_mkl() -> Mkl | None:
    """MKL's libmkl_rt from this environment (the `mkl` wheel puts it in sys.prefix/lib) or the
    system's library path; None where there is none.

    Sequential (one thread, no OpenMP runtime) unless GRAPHPART_BLAS=mkl: `auto` gives MKL only
    the products that run on one thread, and Intel's OpenMP runtime, once loaded, leaves a file
    in /dev/shm behind every process that exits without its atexit handlers (a Ray worker
    killed at shutdown), besides spinning its threads against OpenBLAS's."""
    names = [os.path.join(sys.prefix, "lib", f"libmkl_rt.so.{v}") for v in (3, 2, 1)]
    found = ctypes.util.find_library("mkl_rt")
    names += [found] if found else []
    for path in names:
        if path and (os.path.isabs(path) is False or os.path.exists(path)):
            try:
                return Mkl(ctypes.CDLL(path), path, sequential=mode() != "mkl")
            except (OSError, AttributeError):
                continue
    return None


_MKL: Mkl | None = _load_mkl()  # at import, so that threadpoolctl (which sees only loaded
# libraries) pins MKL's threads with OpenBLAS's


def mkl() -> Mkl | None:
    """The loaded MKL, or None where it is not installed (whether it is used: `mode()`)."""
    return _MKL


def providers() -> dict[str, Gemm]:
    """The BLAS this process can use, by name: `gemm(kind, a, b, out, beta)` each."""
    return {n: f for n, f in _PROVIDERS.items() if n == "openblas" or _MKL is not None}


def describe() -> str:
    """One line: which BLAS runs the products, as GRAPHPART_BLAS and this machine decide."""
    info = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})  # type: ignore[union-attr]
    openblas = f"{info.get('name', 'BLAS')} {info.get('version', '')}".strip()
    m = mode()
    if _MKL is None or m == "openblas":
        why = "MKL not installed" if _MKL is None and m != "openblas" else "GRAPHPART_BLAS=openblas"
        return f"{openblas} for every product ({why})"
    found = re.search(r"Version ([0-9.]+)", _MKL.version)
    mkl_v = f"MKL {found.group(1)}" if found else "MKL"
    if m == "mkl":
        return f"{mkl_v} for every product (GRAPHPART_BLAS=mkl)"
    return (
        f"{mkl_v} or {openblas}, whichever was faster at each product's shape on one thread "
        f"(timed once per machine, {cache_file()}); {openblas} with more threads"
    )


# --- the choice, per product ----------------------------------------------------------------

_chosen: dict[tuple, Gemm] = {}


def _blas_threads() -> Callable[[], int]:
    """NumPy's OpenBLAS thread count now (threadpoolctl and OPENBLAS_NUM_THREADS set it): a
    product's thread count, read in half a microsecond."""
    for lc in ThreadpoolController().lib_controllers:
        if lc.internal_api == "openblas" and "numpy" in lc.filepath:
            return lc.get_num_threads
    return lambda: 1


_threads = _blas_threads()


def gemm(kind: str, a: np.ndarray, b: np.ndarray, out: np.ndarray, beta: float = 0.0) -> None:
    """out = op(a) @ op(b) + beta out, kind "nt" (a b^T), "nn" (a b) or "tn" (a^T b), with the
    BLAS chosen for this product's shape."""
    threads = _threads()
    key = (kind, a.shape, b.shape, out.dtype.char, threads)
    f = _chosen.get(key)
    if f is None:
        f = _chosen[key] = _PROVIDERS[provider_of(kind, a.shape, b.shape, out.dtype, threads)]
    f(kind, a, b, out, beta)


def _mkl_gemm(kind: str, a: np.ndarray, b: np.ndarray, out: np.ndarray, beta: float) -> None:
    assert _MKL is not None
    _MKL.gemm(kind, a, b, out, beta)


_PROVIDERS: dict[str, Gemm] = {"openblas": _openblas, "mkl": _mkl_gemm}


def provider_of(
    kind: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...], dtype: np.dtype, threads: int
) -> str:
    """ "openblas" or "mkl" for this product: by GRAPHPART_BLAS, else the machine's calibration
    (timed now, under a lock, where this machine has not timed it yet)."""
    m = mode()
    if _MKL is None or m == "openblas":
        return "openblas"
    if m == "mkl":
        return "mkl"
    if threads > 1:
        # Two thread pools (OpenMP's for MKL, pthreads' for OpenBLAS) on the same cores spin
        # against each other: timed alternating on 2 cores, either ran 1.5-2x slower than alone.
        # So with threads, one BLAS for every product: OpenBLAS, unless GRAPHPART_BLAS=mkl.
        return "openblas"
    key = _file_key(kind, a_shape, b_shape, np.dtype(dtype), threads)
    with _locked() as table:
        if key not in table:
            table[key] = _calibrate(kind, a_shape, b_shape, np.dtype(dtype))
        return table[key]["pick"]


def choice() -> dict[str, dict]:
    """This machine's calibrations so far: key -> {"pick", "openblas_us", "mkl_us"}."""
    path = cache_file()
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _file_key(
    kind: str, a: tuple[int, ...], b: tuple[int, ...], dtype: np.dtype, threads: int
) -> str:
    return f"{kind} {'x'.join(map(str, a))} {'x'.join(map(str, b))} {dtype.name} t{threads}"


def _calibrate(kind: str, a_shape: tuple, b_shape: tuple, dtype: np.dtype) -> dict:
    """Time both providers on scratch operands of these shapes, alternating, best per call."""
    assert _MKL is not None
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    ta, tb = _TRANS[kind]
    out = np.zeros((a_shape[1] if ta else a_shape[0], b_shape[0] if tb else b_shape[1]), dtype)
    flops = 2 * out.size * (a_shape[0] if ta else a_shape[1])
    calls = max(1, min(20, int(2e7 / max(flops, 1))))  # ~0.2 ms of work a round at 100 GFLOP/s
    for f in _PROVIDERS.values():
        f(kind, a, b, out, 0.0)  # first calls load code and start thread pools: not timed
    best = {"openblas": float("inf"), "mkl": float("inf")}
    for _ in range(7):
        for name, f in _PROVIDERS.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f(kind, a, b, out, 0.0)
            best[name] = min(best[name], (time.perf_counter() - t0) / calls)
    pick = "mkl" if best["mkl"] < _MARGIN * best["openblas"] else "openblas"
    return {
        "pick": pick,
        "openblas_us": round(best["openblas"] * 1e6, 2),
        "mkl_us": round(best["mkl"] * 1e6, 2),
    }


def cache_file() -> Path:
    """This machine's calibration file: per CPU model, NumPy's BLAS and MKL's version."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graphpart"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})  # type: ignore[union-attr]
    what = "|".join(
        [cpu, str(blas.get("version", "")), _MKL.version if _MKL else "", np.__version__]
    )
    return base / f"blas-{hashlib.sha1(what.encode()).hexdigest()[:12]}.json"


@contextlib.contextmanager
def _locked() -> Iterator[dict]:
    """The calibration table, read and (if changed) written back atomically under an exclusive
    lock: processes that start together time each shape once, and agree."""
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            table = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            table = {}  # a damaged cache is timed again, never trusted
        before = dict(table)
        yield table
        if table != before:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
            os.replace(tmp, path)
