"""Extreme eigenvalues of a symmetric operator known only through its products: Lanczos and
power iteration (with deflation), as run on Hessian-vector products."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MatVec = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Eigen:
    """Eigenvalue estimates (largest first) and the products they cost."""

    values: tuple[float, ...]
    products: int
    residuals: tuple[float, ...] = ()  # ||A u - lambda u|| / |lambda| per value (power iteration)


def lanczos(matvec: MatVec, n: int, iters: int, top: int, seed: int = 0) -> Eigen:
    """The `top` largest Ritz values after `iters` Lanczos steps (full reorthogonalisation)."""
    rng = np.random.default_rng(seed)
    m = min(iters, n)
    Q = np.zeros((m, n))
    alpha, beta = np.zeros(m), np.zeros(m)
    q = rng.standard_normal(n)
    q /= np.linalg.norm(q)
    steps = 0
    for j in range(m):
        Q[j] = q
        w = matvec(q)
        steps += 1
        alpha[j] = q @ w
        w -= Q[: j + 1].T @ (Q[: j + 1] @ w)  # full reorthogonalisation (twice is enough)
        w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
        beta[j] = np.linalg.norm(w)
        if beta[j] < 1e-12 * max(1.0, abs(alpha[j])) or j == m - 1:
            break
        q = w / beta[j]
    k = steps
    T = np.diag(alpha[:k]) + np.diag(beta[: k - 1], 1) + np.diag(beta[: k - 1], -1)
    ritz = np.linalg.eigvalsh(T)[::-1]
    return Eigen(tuple(float(x) for x in ritz[:top]), steps)


def power_iteration(matvec: MatVec, n: int, count: int, iters: int, seed: int = 0) -> Eigen:
    """The `count` eigenvalues of largest magnitude, one at a time, each deflated from the
    operator once found; `iters` products each (fewer when the Rayleigh quotient settles)."""
    rng = np.random.default_rng(seed)
    found: list[tuple[float, np.ndarray]] = []
    values, residuals = [], []
    products = 0

    def deflated(u: np.ndarray) -> np.ndarray:
        out = matvec(u)
        for lam, e in found:
            out = out - lam * (e @ u) * e
        return out

    for _ in range(count):
        u = rng.standard_normal(n)
        u /= np.linalg.norm(u)
        lam, last = 0.0, np.inf
        for _ in range(iters):
            w = deflated(u)
            products += 1
            lam = float(u @ w)
            nw = np.linalg.norm(w)
            if nw == 0:
                break
            u = w / nw
            if abs(lam - last) <= 1e-12 * abs(lam):
                break
            last = lam
        au = deflated(u)
        products += 1
        lam = float(u @ au)
        residuals.append(float(np.linalg.norm(au - lam * u) / max(abs(lam), 1e-300)))
        values.append(lam)
        found.append((lam, u))
    return Eigen(tuple(values), products, tuple(residuals))
