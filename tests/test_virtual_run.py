"""Schedules with virtual stages run: interleaved 1F1B and ZB-V through the executor equal the
oracle.

Contract. With the model cut into V = K x v virtual stages and each of K devices running its v
chunks in the order graphpart.plan.virtual_schedules gives (interleaved: v in {1, 2, 3}; zbv:
v = 2, I and W apart), for K in {1, 2, 3, 4} and M in {1, 2, 3, 4, 5, 8} micro-batches of an
8-row minibatch (M < K, M not a multiple of K, one-row micro-batches at M = 8; V = the model's
12 layers at K = 4, v = 3):

- `gp.value_and_grad(..., schedule=, chunks=)` (the in-process chain of stage programs) gives
  the oracle's J and gradients (graphpart.autodiff, one process) to 1e-10 relative in float64;
- an in-process Engine's J each step and its parameters after 3 Adam steps equal the oracle's
  training to 1e-10, with and without recompute (the fast lane runs M in {3, 8}, recompute at
  M = 3; the slow lane every schedule, K, v, M and recompute setting);
- each chunk's worker holds as many activation slots and pending-W slots as its chunk's peak
  in the device's list (virtual_sim.chunk_peaks), and gives them all back;
- on Ray (`shm`; `push` once), the same training and then inference through the devices are
  bit-identical to the in-process ones; a removed transport (`tasks`, `compiled`) is refused
  in one line naming the ones there are.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import batches, max_rel, mlp_problem, oracle_training, rel_err

import graphpart as gp
from graphpart.autodiff import value_and_grad
from graphpart.engines import Engine
from graphpart.errors import ConfigError, PlanError
from graphpart.optim import Adam
from graphpart.plan.kinds import make
from graphpart.plan.partition import partition
from graphpart.plan.virtual_sim import chunk_peaks

SIZES = [5, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3]  # twelve layers
BATCH, STEPS = 8, 3
KS = [1, 2, 3, 4]
MS = [1, 2, 3, 4, 5, 8]
MS_FAST = [3, 8]  # the fast lane's (the slow lane runs MS)
CASES = [("interleaved", v) for v in (1, 2, 3)] + [("zbv", 2)]
OPT = Adam(lr=0.01)
PROBLEM = mlp_problem(SIZES, BATCH * STEPS)
ORACLE = oracle_training(*PROBLEM, OPT, BATCH)


@pytest.mark.parametrize(("schedule", "v"), CASES)
@pytest.mark.parametrize("k", KS)
def test_gradients_match_the_oracle(schedule, v, k):
    g, p0, X, y = PROBLEM
    batch = {"x": X[:BATCH], "y": y[:BATCH]}
    J, want = value_and_grad(g, p0, batch)
    for m in MS:
        Jv, got = gp.value_and_grad(
            g, p0, batch, stages=k * v, microbatches=m, schedule=schedule, chunks=v
        )
        assert abs(Jv - J) <= 1e-10 * abs(J), m
        assert max_rel(want, got) < 1e-10, m


def _train(k, v, m, schedule, recompute, transport="inprocess"):
    g, p0, X, y = PROBLEM
    eng = Engine(
        partition(g, k * v, "uniform"),
        p0,
        OPT,
        microbatches=m,
        schedule=schedule,
        chunks=v,
        max_rows=BATCH,
        recompute=recompute,
        transport=transport,
    )
    Js = [eng.step(xb, yb).J for xb, yb in batches(X, y, BATCH)]
    return eng, Js


def _check_training(k, v, m, schedule, recompute):
    Js, want = ORACLE
    eng, got_J = _train(k, v, m, schedule, recompute)
    for t, J in enumerate(got_J):
        assert abs(J - Js[t]) <= 1e-10 * abs(Js[t]), (k, v, m, t)
    got = eng.get_params()
    for name in want:
        assert rel_err(got[name], want[name]) < 1e-10, (k, v, m, name)
    where, actions = make(schedule, k, v, m)
    for d, acts in enumerate(actions):
        for c, (held, pending) in enumerate(chunk_peaks(acts, v)):
            prog = eng.transport.workers[where.stage(d, c)].prog
            assert (len(prog.slots), len(prog.pending)) == (held, pending), (k, v, m, d, c)
            assert not prog.pending_of and not prog.slot_of  # all given back
    eng.close()


@pytest.mark.parametrize(("schedule", "v"), CASES)
@pytest.mark.parametrize("k", KS)
def test_training_matches_the_oracle(schedule, v, k):
    for m in MS_FAST:  # M < K at K = 4, not a multiple of K at K = 2, one-row micro-batches
        _check_training(k, v, m, schedule, recompute=m % 2 == 1)


@pytest.mark.slow  # every schedule, K, v, M and recompute setting: the slow lane
@pytest.mark.parametrize("recompute", [False, True])
def test_every_virtual_schedule_trains_like_the_oracle(recompute):
    for schedule, v in CASES:
        for k in KS:
            for m in MS:
                _check_training(k, v, m, schedule, recompute)


def test_a_short_minibatch_and_inference():
    """A minibatch of fewer rows than micro-batches runs one row each, like the oracle, and
    the engine's inference through the devices' chunks gives the oracle's logits."""
    g, p0, X, y = PROBLEM
    with Engine(
        partition(g, 6, "uniform"), p0, OPT, microbatches=4, schedule="zbv", max_rows=BATCH
    ) as eng:
        assert eng.chunks == 2 and eng.devices == 3
        r = eng.step(X[:3], y[:3])  # 3 rows, 4 micro-batches: one row each
        J3, _ = value_and_grad(g, p0, {"x": X[:3], "y": y[:3]})
        assert abs(r.J - J3) <= 1e-10 * abs(J3)
        params = eng.get_params()
        with Engine(partition(g, 1), params, OPT, max_rows=BATCH) as one:
            np.testing.assert_allclose(eng.predict(X), one.predict(X), rtol=1e-12)


def test_refusals():
    """A removed transport, a plan that does not split into the devices, and a change of
    placement on the same workers are refused in one line."""
    g, p0, _, _ = PROBLEM
    for name in ("tasks", "compiled"):
        want = f"transport='{name}'; valid: auto, inprocess, push, shm; {name} was removed"
        with pytest.raises(ConfigError, match=want):
            Engine(partition(g, 4), p0, OPT, schedule="zbv", max_rows=BATCH, transport=name)
    with pytest.raises(PlanError, match="3 stages does not make devices of 2 chunks"):
        Engine(partition(g, 3), p0, OPT, schedule="zbv", max_rows=BATCH)
    with Engine(partition(g, 4), p0, OPT, schedule="interleaved", max_rows=BATCH) as eng:
        with pytest.raises(PlanError, match="places the stages as 'v'"):
            eng.reschedule("zbv", 2)


@pytest.mark.ray
def test_ray_transports_are_bit_identical_to_in_process(ray_session):
    for k, v, m, schedule, recompute, transports in (
        (2, 2, 3, "interleaved", False, ("shm", "push")),  # wrap-around, M not % K
        (2, 2, 5, "zbv", True, ("shm",)),  # the V's turn in process, I and W apart
        (2, 3, 1, "interleaved", False, ("shm",)),  # M < K
        (2, 1, 2, "interleaved", False, ("shm",)),  # one chunk a device: 1F1B, keyed by stage
    ):
        ref, ref_J = _train(k, v, m, schedule, recompute)
        want, logits = ref.get_params(), ref.predict(PROBLEM[2])
        ref.close()
        for transport in transports:
            eng, got_J = _train(k, v, m, schedule, recompute, transport)
            try:
                assert got_J == ref_J, (transport, schedule)
                got = eng.get_params()
                for name in want:
                    np.testing.assert_array_equal(got[name], want[name], err_msg=transport)
                np.testing.assert_array_equal(eng.predict(PROBLEM[2]), logits, err_msg=transport)
            finally:
                eng.close()
