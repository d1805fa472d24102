"""Shared fixtures: one Ray session for the whole test run, with BLAS pinned per worker."""

from __future__ import annotations

import os

import pytest

NUM_CPUS = 2


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray started once per test session with an explicit CPU count."""
    import ray

    from workers.actor import blas_env

    if not ray.is_initialized():
        ray.init(
            num_cpus=NUM_CPUS,
            include_dashboard=False,
            logging_level="WARNING",
            runtime_env={"env_vars": blas_env(1)},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def _quiet_numba_warnings():
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")
    yield
