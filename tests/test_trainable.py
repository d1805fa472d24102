"""Contract of graphpart.engines.trainable: Engine and DataParallel both satisfy Trainable.

An in-process Engine is an instance of the (runtime-checkable) protocol; DataParallel (whose
replicas need Ray) has every method of the protocol with the same parameters as the
protocol's, so the training loop, checkpoints and reports can take either.
"""

from __future__ import annotations

import inspect

import numpy as np
from conftest import mlp_problem

from graphpart.engines import DataParallel, Engine, Trainable
from graphpart.optim import SGD
from graphpart.plan.partition import partition

METHODS = [
    name
    for name, v in vars(Trainable).items()
    if (callable(v) and not name.startswith("_")) or name in ("__enter__", "__exit__")
]


def test_an_inprocess_engine_is_trainable():
    g, p0, X, Y = mlp_problem([4, 5, 3], 6)
    with Engine(partition(g, 2), p0, SGD(lr=0.1), microbatches=2, max_rows=6) as eng:
        assert isinstance(eng, Trainable)
        r = eng.step(X, Y)
        assert np.isfinite(r.J)


def test_the_protocol_names_the_public_surface():
    assert {"step", "value_and_grad", "predict", "get_params", "get_state", "set_state"} <= set(
        METHODS
    )
    assert {"stats", "events", "close", "__enter__", "__exit__"} <= set(METHODS)


def test_both_engines_have_every_method_with_the_protocols_parameters():
    for cls in (Engine, DataParallel):
        for name in METHODS:
            want = list(inspect.signature(getattr(Trainable, name)).parameters)
            got = list(inspect.signature(getattr(cls, name)).parameters)
            assert got == want, (cls.__name__, name)
        assert isinstance(inspect.getattr_static(cls, "kind"), str | property), cls
        assert isinstance(inspect.getattr_static(cls, "microbatches"), int | property), cls
