"""Shared fixtures and helpers: one Ray session for the whole run, BLAS pinned per worker, the
`ray` marker for tests that start Ray or other processes, and the problem/oracle helpers."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from graphpart.autodiff import value_and_grad
from graphpart.ir import Graph, mlp
from graphpart.optim import Optimizer, init_state, reference_step
from workers.actor import blas_env

NUM_CPUS = 2
# One BLAS for every product, in this process and the Ray workers it starts (they inherit the
# environment): results bit-identical across transports whatever the thread counts. The MKL
# and calibrated paths are tests/test_blas.py's, which set the variable themselves.
os.environ.setdefault("GRAPHPART_BLAS", "openblas")


def pytest_configure(config: pytest.Config) -> None:
    """Cache the rewritten test modules' bytecode (in git-ignored __pycache__ folders) even
    where PYTHONDONTWRITEBYTECODE is set: rewriting 121 modules afresh took half of the
    fast lane's collection (7.2 -> 2.9 s measured)."""
    sys.dont_write_bytecode = False


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray started once per test session with an explicit CPU count."""
    import ray

    from graphpart.engines.cluster import start_ray, stop_ray

    # graphpart's own local Ray (lean head, 127.0.0.1 only), with one BLAS thread a worker
    start_ray(num_cpus=NUM_CPUS, runtime_env={"env_vars": blas_env(1)})
    yield ray
    stop_ray()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses Ray, or is marked slow, is in the slow lane (`-m ray`), wherever it is
    declared: `pytest -m "not ray"` is the fast lane."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(autouse=True, scope="session")
def _quiet_numba_warnings():
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")
    yield


# -- helpers (import them: `from conftest import rel_err`) --------------------------------------
def rel_err(got, want) -> float:
    """max |got - want| / max |want| (0 when equal, even at zero)."""
    a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def max_rel(want: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> float:
    """The largest rel_err over the named arrays of `want`."""
    return max(rel_err(got[k], want[k]) for k in want)


def mlp_problem(
    sizes: Sequence[int],
    rows: int,
    *,
    seed: int = 0,
    activation: str = "tanh",
    bias: bool = True,
    loss: str = "cross_entropy",
    weight_decay: float = 0.05,
) -> tuple[Graph, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A float64 MLP, random parameters and `rows` rows of inputs and labels (or targets)."""
    g = mlp(sizes, activation=activation, bias=bias, loss=loss, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    p0 = {v.name: rng.standard_normal(v.shape) for v in g.params}
    X = rng.standard_normal((rows, sizes[0]))
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], rows)
    else:
        y = rng.standard_normal((rows, sizes[-1]))
    return g, p0, X, y


def batches(X: np.ndarray, y: np.ndarray, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(X[i : i + batch], y[i : i + batch]) for i in range(0, len(X), batch)]


def oracle_training(
    g: Graph, p0: Mapping[str, np.ndarray], X: np.ndarray, y: np.ndarray, opt: Optimizer, batch: int
) -> tuple[list[float], dict[str, np.ndarray]]:
    """The J of every step and the final parameters of training by the reference autodiff and
    optimizer, one minibatch of `batch` rows a step."""
    params = {k: v.copy() for k, v in p0.items()}
    state = init_state(opt, params)
    Js = []
    for t, (xb, yb) in enumerate(batches(X, y, batch), start=1):
        J, grads = value_and_grad(g, params, {"x": xb, "y": yb})
        Js.append(J)
        reference_step(opt, params, grads, state, t)
    return Js, params


# -- data files (the readers' tests) -------------------------------------------------------------
def one_line(exc: pytest.ExceptionInfo) -> str:
    """The raised error's message, checked to be one line."""
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def npz_file(tmp_path, name="d.npz", **arrays) -> str:
    """`arrays` saved as an .npz in tmp_path; its path."""
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path


def xy(n=20, d=3, classes=3, seed=0):
    """n rows of d standard-normal features and labels cycling through `classes`."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), np.arange(n) % classes
