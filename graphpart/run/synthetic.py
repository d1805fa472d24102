"""Synthetic data: standard-normal inputs labelled by a random teacher MLP, or its shape alone."""

from __future__ import annotations

import numpy as np

from graphpart.errors import DataError
from graphpart.run.dataset import (
    TASKS,
    Dataset,
    DataShape,
    DataSpec,
    check_dtype,
    check_fraction,
    check_int,
    is_int,
    n_test,
)

_CHUNK_ROWS = 1 << 16  # rows generated at once


def load(spec: DataSpec) -> Dataset:
    """The data set `spec` describes, generated (n_classes None: 10; task None: classes)."""
    return synthetic(
        n_samples=spec.n_samples,
        n_features=spec.n_features,
        n_classes=10 if spec.n_classes is None else spec.n_classes,
        hidden=spec.hidden,
        seed=spec.seed,
        dtype=spec.dtype,
        task=spec.task or "classification",
        test_fraction=spec.test_fraction,
        noise=spec.noise,
    )


def shape(spec: DataSpec) -> DataShape:
    """What `load(spec)` would give, from the spec alone."""
    dt = check_dtype(spec.dtype).name
    frac = check_fraction(spec.test_fraction)
    task = spec.task or "classification"
    if task not in TASKS:
        raise DataError(f"task={task!r}: must be one of {', '.join(TASKS)}")
    n = check_int("n_samples", spec.n_samples, 2)
    d = check_int("n_features", spec.n_features, 1)
    q = check_int("n_classes", 10 if spec.n_classes is None else spec.n_classes, 1)
    if task == "classification":
        q = check_int("n_classes", q, 2)
    k = n_test(n, frac)
    return DataShape("synthetic", d, q, q if task == "classification" else None, n - k, k, dt)


def _teacher(rng: np.random.Generator, sizes: list[int]) -> list[np.ndarray]:
    pairs = zip(sizes[:-1], sizes[1:], strict=True)
    return [rng.standard_normal((a, b)) / np.sqrt(a) for a, b in pairs]


def _fill(
    X: np.ndarray,
    y: np.ndarray,
    weights: list[np.ndarray],
    rng_x: np.random.Generator,
    rng_noise: np.random.Generator,
    classification: bool,
    noise: float,
) -> None:
    for start in range(0, len(X), _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, len(X))
        rng_x.standard_normal(dtype=X.dtype, out=X[start:stop])
        h = X[start:stop]
        for i, w in enumerate(weights):
            h = h @ w
            if i < len(weights) - 1:
                np.tanh(h, out=h)
        if classification:
            y[start:stop] = np.argmax(h, axis=1)
        else:
            if noise:
                h += noise * rng_noise.standard_normal(h.shape, dtype=h.dtype)
            y[start:stop] = h


def synthetic(
    n_samples: int = 10000,
    n_features: int = 64,
    n_classes: int = 10,
    hidden: tuple[int, ...] | list[int] = (128,),
    seed: int = 0,
    dtype: str = "float32",
    task: str = "classification",
    test_fraction: float = 0.2,
    noise: float = 0.0,
) -> Dataset:
    """Standard-normal inputs labelled by a random tanh teacher MLP (weights N(0, 1/fan_in)).

    Classification labels are the argmax of the teacher's n_classes logits; regression targets are
    its n_classes outputs plus noise * N(0, 1). Rows are generated in chunks straight into the
    train and test arrays (the first n_train rows are train), so memory is one copy of the data.
    """
    dt = check_dtype(dtype)
    if task not in TASKS:
        raise DataError(f"task={task!r}: must be one of {', '.join(TASKS)}")
    classification = task == "classification"
    n = check_int("n_samples", n_samples, 2)
    d = check_int("n_features", n_features, 1)
    q = check_int("n_classes", n_classes, 2 if classification else 1)
    hidden = list(hidden)
    if not all(is_int(h) and h >= 1 for h in hidden):
        raise DataError(f"hidden={hidden!r}: sizes must be positive integers")
    frac = check_fraction(test_fraction)
    ok_noise = isinstance(noise, (int, float)) and not isinstance(noise, bool)
    if not ok_noise or not 0.0 <= noise < float("inf"):
        raise DataError(f"noise={noise!r}: must be a finite number >= 0")

    weights = [w.astype(dt) for w in _teacher(np.random.default_rng([seed, 0]), [d, *hidden, q])]
    rng_x = np.random.default_rng([seed, 1])
    rng_noise = np.random.default_rng([seed, 2])
    k = n_test(n, frac)
    parts = []
    for rows in (n - k, k):
        X = np.empty((rows, d), dtype=dt)
        y = np.empty(rows, np.int64) if classification else np.empty((rows, q), dtype=dt)
        _fill(X, y, weights, rng_x, rng_noise, classification, float(noise))
        parts += [X, y]
    return Dataset("synthetic", *parts, q if classification else None)
