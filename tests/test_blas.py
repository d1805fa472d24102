"""Contract of workers.kernels.blas.

`gemm(kind, a, b, out, beta)` writes op(a) @ op(b) + beta * out into `out` for the three kinds
of an MLP layer ("nt": a b^T, "nn": a b, "tn": a^T b) through either provider, agreeing with
NumPy to rounding in float32 and float64, for odd shapes, empty ones, and operands that are not
C-contiguous: a column block, whose rows are contiguous, both take as it is (MKL's cblas, and
NumPy's OpenBLAS through its own cblas where SciPy's gemm would copy it); any other layout goes
to OpenBLAS. A product with beta runs on NumPy's own OpenBLAS (its cblas), not on SciPy's.
`GRAPHPART_BLAS` must be auto, openblas or mkl; a bad value is an error naming it and the
valid ones. With `auto` and MKL installed, a product on
one thread is timed once per machine with both providers and the pick is stored in the cache
file, which a second asking (or another process) reads instead of timing again; a damaged
file is timed again, never trusted; with threads, or without MKL, OpenBLAS runs every product.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workers.kernels import blas

HAS_MKL = blas.mkl() is not None
needs_mkl = pytest.mark.skipif(not HAS_MKL, reason="MKL is not installed (pip install mkl)")
ROOT = Path(__file__).resolve().parents[1]


def _operands(kind: str, m: int, n: int, k: int, dtype, rng) -> tuple[np.ndarray, np.ndarray]:
    a = rng.standard_normal((k, m) if kind == "tn" else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if kind == "nt" else (k, n)).astype(dtype)
    return a, b


def _expected(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    a64 = a64.T if kind == "tn" else a64
    return a64 @ (b64.T if kind == "nt" else b64)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache folder and a clean in-memory choice."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(blas, "_chosen", {})
    return tmp_path


PROVIDERS = ["openblas"] + (["mkl"] if HAS_MKL else [])


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("kind", ["nt", "nn", "tn"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mnk", [(7, 13, 5), (1, 1, 1), (64, 10, 33)])
def test_gemm_matches_numpy(provider, kind, dtype, mnk, cache, monkeypatch):
    monkeypatch.setenv("GRAPHPART_BLAS", provider)
    rng = np.random.default_rng(0)
    a, b = _operands(kind, *mnk, dtype, rng)
    out = rng.standard_normal(_expected(kind, a, b).shape).astype(dtype)
    before = out.astype(np.float64)
    eps = np.finfo(dtype).eps
    for beta in (0.0, 1.0):
        start = out.astype(np.float64)
        blas.gemm(kind, a, b, out, beta)
        want = _expected(kind, a, b) + beta * start
        np.testing.assert_allclose(out, want, rtol=64 * eps, atol=64 * eps * np.abs(want).max())
    assert not np.array_equal(out, before)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_views_and_empty_products(provider, cache, monkeypatch):
    monkeypatch.setenv("GRAPHPART_BLAS", provider)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((8, 12))[:, ::2]  # not C-contiguous: handed to OpenBLAS
    b = rng.standard_normal((5, 6))
    out = np.empty((8, 5))
    blas.gemm("nt", a, b, out)
    np.testing.assert_allclose(out, a @ b.T, rtol=1e-12)
    rows = rng.standard_normal((10, 6))[2:6]  # a row block: C-contiguous, taken as it is
    out4 = np.empty((4, 5))
    blas.gemm("nt", rows, b, out4)
    np.testing.assert_allclose(out4, rows @ b.T, rtol=1e-12)
    # a column block (rows contiguous, the whole row's stride): a row block of a weight
    # gradient, accumulated in place (beta 1) with no temporary, on either provider
    assert blas._CBLAS is not None  # NumPy's OpenBLAS, through its cblas
    dz, x = rng.standard_normal((16, 9)), rng.standard_normal((16, 7))
    grad = rng.standard_normal((9, 7))
    want = grad.copy()
    want[3:7] += dz[:, 3:7].T @ x
    assert blas._ld(dz[:, 3:7]) == 9 and blas._ld(dz[:, ::2]) is None
    blas.gemm("tn", dz[:, 3:7], x, grad[3:7], 1.0)
    np.testing.assert_allclose(grad, want, rtol=1e-12)
    empty = np.ones((3, 4))
    blas.gemm("tn", np.empty((0, 3)), np.empty((0, 4)), empty, 1.0)  # k = 0: out *= beta
    np.testing.assert_array_equal(empty, np.ones((3, 4)))
    blas.gemm("tn", np.empty((0, 3)), np.empty((0, 4)), empty, 0.0)
    np.testing.assert_array_equal(empty, np.zeros((3, 4)))


def test_bad_mode_names_value_and_choices(monkeypatch):
    monkeypatch.setenv("GRAPHPART_BLAS", "atlas")
    with pytest.raises(ValueError, match=r"GRAPHPART_BLAS='atlas'.*auto, openblas, mkl"):
        blas.mode()


def test_openblas_mode_and_threads_never_time(cache, monkeypatch):
    monkeypatch.setenv("GRAPHPART_BLAS", "openblas")
    assert blas.provider_of("nt", (64, 32), (48, 32), np.dtype(np.float32), 1) == "openblas"
    monkeypatch.setenv("GRAPHPART_BLAS", "auto")
    assert blas.provider_of("nt", (64, 32), (48, 32), np.dtype(np.float32), 2) == "openblas"
    assert not list(cache.rglob("*.json"))  # nothing timed, nothing written


@needs_mkl
def test_auto_times_once_and_the_file_decides(cache, monkeypatch):
    monkeypatch.setenv("GRAPHPART_BLAS", "auto")
    args = ("nt", (64, 96), (80, 96), np.dtype(np.float32), 1)
    pick = blas.provider_of(*args)
    assert pick in ("openblas", "mkl")
    (entry,) = blas.choice().values()
    assert entry["pick"] == pick and entry["openblas_us"] > 0 and entry["mkl_us"] > 0
    # the file decides from now on: a forged pick is believed, not timed again
    forged = {
        k: {**v, "pick": "mkl" if pick == "openblas" else "openblas"}
        for k, v in blas.choice().items()
    }
    blas.cache_file().write_text(json.dumps(forged))
    assert blas.provider_of(*args) != pick
    # a damaged file is timed again, and rewritten whole
    blas.cache_file().write_text("{not json")
    assert blas.provider_of(*args) in ("openblas", "mkl")
    assert len(blas.choice()) == 1


@needs_mkl
@pytest.mark.ray  # starts another process
def test_another_process_reads_the_same_pick(cache, monkeypatch):
    monkeypatch.setenv("GRAPHPART_BLAS", "auto")
    args = ("nn", (32, 40), (40, 24), np.dtype(np.float64), 1)
    pick = blas.provider_of(*args)
    code = (
        "import numpy as np; from workers.kernels import blas; "
        "print(blas.provider_of('nn', (32, 40), (40, 24), np.dtype(np.float64), 1))"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "GRAPHPART_BLAS": "auto"}
    got = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == pick
    assert len(blas.choice()) == 1  # the second process timed nothing new


@needs_mkl
@pytest.mark.ray  # starts another process
@pytest.mark.parametrize("mode,openmp", [("auto", False), ("mkl", True)])
def test_auto_runs_mkl_without_an_openmp_runtime(mode, openmp, cache):
    """`auto` loads MKL sequential: no Intel OpenMP runtime in the process (whose registration
    file in /dev/shm outlives a killed process); GRAPHPART_BLAS=mkl keeps MKL's threads."""
    code = (
        "import numpy as np; from workers.kernels import blas; "
        "a = np.ones((64, 96), np.float32); o = np.empty((64, 64), np.float32); "
        "blas._MKL.gemm('nt', a, np.ones((64, 96), np.float32), o, 0.0); "
        "print('libiomp5' in open('/proc/self/maps').read())"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "GRAPHPART_BLAS": mode}
    got = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == str(openmp)


def test_accumulating_products_run_on_numpys_own_openblas(monkeypatch):
    """A product with beta (a gradient accumulated over micro-batches) goes to the OpenBLAS
    NumPy's own products run on, through its cblas, not to SciPy's second OpenBLAS: two
    libraries' thread pools spinning on the same cores made accumulation with two threads
    3.6x slower than one micro-batch."""
    assert blas._CBLAS is not None  # NumPy's wheels bundle OpenBLAS
    calls: list[str] = []
    real = blas._CBLAS.gemm
    monkeypatch.setattr(
        blas._CBLAS, "gemm", lambda kind, *rest: (calls.append(kind), real(kind, *rest))
    )
    monkeypatch.setattr(blas, "_GEMM", {})  # SciPy's gemm is not needed
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 32)), rng.standard_normal((64, 16))
    out = rng.standard_normal((32, 16))
    want = a.T @ b + 0.5 * out
    blas._openblas("tn", a, b, out, 0.5)
    assert calls == ["tn"]
    np.testing.assert_allclose(out, want, rtol=1e-12)
