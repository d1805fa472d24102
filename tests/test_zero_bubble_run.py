"""The zero-bubble schedules run: ZB-H1 and ZB-H2 through the executor equal the oracle.

Contract. With each backward split into I (`backward_input`) and W (`backward_weight`) calls
as graphpart.plan.schedule.zb_h1 / zb_h2 order them, for K in {1, 2, 3, 4} stages (4 = the
model's layers) and M in {1, 2, 3, 4, 5, 8} micro-batches of an 8-row minibatch (M < K, M not a
multiple of K, one-row micro-batches at M = 8, uneven ones at M = 5):

- `gp.value_and_grad(..., schedule=...)` (the in-process chain of stage programs) gives the
  oracle's J and gradients (graphpart.autodiff, one process) to 1e-10 relative in float64;
- an in-process Engine's J each step and its parameters after 3 optimizer steps (SGD with
  momentum) equal the oracle's training to 1e-10, with and without recompute (the fast lane
  runs ZB-H1 with recompute on even M; the slow lane every schedule, K, M and recompute);
- `Engine.value_and_grad` does too, and a minibatch of fewer rows than micro-batches runs one
  row each;
- each stage holds as many slots as the schedule's peak in-flight count (F to W) and as many
  pending-W slots as its most micro-batches between I and W;
- on Ray (`shm` and `push`), the same training is bit-identical to the in-process one.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import batches, max_rel, mlp_problem, oracle_training, rel_err

import graphpart as gp
from graphpart.autodiff import value_and_grad
from graphpart.engines import Engine
from graphpart.optim import SGD
from graphpart.plan import schedule as sch
from graphpart.plan.partition import partition

SIZES = [5, 4, 6, 3, 3]  # four layers
BATCH, STEPS = 8, 3
KS = [1, 2, 3, 4]
MS = [1, 2, 3, 4, 5, 8]
SPLIT = ["zb-h1", "zb-h2"]
OPT = SGD(lr=0.05, momentum=0.9)
PROBLEM = mlp_problem(SIZES, BATCH * STEPS)
ORACLE = oracle_training(*PROBLEM, OPT, BATCH)


@pytest.mark.parametrize("schedule", SPLIT)
@pytest.mark.parametrize("k", KS)
def test_gradients_match_the_oracle(schedule, k):
    g, p0, X, y = PROBLEM
    batch = {"x": X[:BATCH], "y": y[:BATCH]}
    J, want = value_and_grad(g, p0, batch)
    for m in MS:
        Jz, got = gp.value_and_grad(g, p0, batch, stages=k, microbatches=m, schedule=schedule)
        assert abs(Jz - J) <= 1e-10 * abs(J), m
        assert max_rel(want, got) < 1e-10, m


def _train(k, m, schedule, recompute, transport="inprocess"):
    g, p0, X, y = PROBLEM
    eng = Engine(
        partition(g, k, "uniform"),
        p0,
        OPT,
        microbatches=m,
        schedule=schedule,
        max_rows=BATCH,
        recompute=recompute,
        transport=transport,
    )
    Js = [eng.step(xb, yb).J for xb, yb in batches(X, y, BATCH)]
    return eng, Js


def _check_training(k, m, schedule, recompute):
    Js, want = ORACLE
    eng, got_J = _train(k, m, schedule, recompute)
    for t, J in enumerate(got_J):
        assert abs(J - Js[t]) <= 1e-10 * abs(Js[t]), t
    got = eng.get_params()
    for name in want:
        assert rel_err(got[name], want[name]) < 1e-10, name
    actions = sch.make(schedule, k, m)
    for w, acts in zip(eng.transport.workers, actions, strict=True):
        assert len(w.prog.slots) == sch.peak_in_flight(acts)
        assert len(w.prog.pending) == sch.peak_pending(acts)
        assert not w.prog.pending_of and not w.prog.slot_of  # all given back
    eng.close()


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("m", MS)
def test_zb_h1_training_matches_the_oracle(k, m):
    _check_training(k, m, "zb-h1", recompute=m % 2 == 0)


def test_engine_value_and_grad_and_a_short_minibatch():
    """Engine.value_and_grad under ZB-H1 gives the oracle's gradients without updating, and a
    minibatch of fewer rows than micro-batches (one row each) trains like the oracle."""
    g, p0, X, y = PROBLEM
    batch = {"x": X[:BATCH], "y": y[:BATCH]}
    J, want = value_and_grad(g, p0, batch)
    with Engine(
        partition(g, 3, "uniform"), p0, OPT, microbatches=4, schedule="zb-h1", max_rows=BATCH
    ) as eng:
        Je, got = eng.value_and_grad(batch["x"], batch["y"])
        assert abs(Je - J) <= 1e-10 * abs(J) and max_rel(want, got) < 1e-10
        r = eng.step(X[:3], y[:3])  # 3 rows, 4 micro-batches: one row each
        J3, _ = value_and_grad(g, p0, {"x": X[:3], "y": y[:3]})
        assert abs(r.J - J3) <= 1e-10 * abs(J3)


@pytest.mark.slow  # every schedule, K, M and recompute setting: the slow lane
@pytest.mark.parametrize("schedule", SPLIT)
@pytest.mark.parametrize("recompute", [False, True])
def test_every_split_schedule_trains_like_the_oracle(schedule, recompute):
    for k in KS:
        for m in MS:
            _check_training(k, m, schedule, recompute)


@pytest.mark.ray
def test_ray_transports_are_bit_identical_to_in_process(ray_session):
    every = ("shm", "push")
    for k, m, schedule, recompute, transports in (
        (3, 5, "zb-h1", False, every),
        (2, 4, "zb-h2", True, ("shm",)),
    ):
        ref, ref_J = _train(k, m, schedule, recompute)
        want = ref.get_params()
        ref.close()
        for transport in transports:
            eng, got_J = _train(k, m, schedule, recompute, transport)
            try:
                assert got_J == ref_J, transport
                got = eng.get_params()
                for name in want:
                    np.testing.assert_array_equal(got[name], want[name], err_msg=transport)
            finally:
                eng.close()
