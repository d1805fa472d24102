"""Contract of graphpart.engines.engine (Engine over the inprocess transport: no Ray).

After several optimizer steps (SGD with momentum, Adam), an in-process Engine's parameters equal the
oracle's (autodiff.value_and_grad + optim.reference_step) to 1e-10 relative in float64, for
K in 1..4 stages, M in {1, 2, 3, 4, 8} micro-batches, both schedules ("gpipe", "1f1b") and both
partition strategies; each step reports the J of the parameters it started from.
Each stage uses as many activation slots as the
schedule's peak in-flight count. `value_and_grad` gives the oracle's J and gradients without
updating; `predict` gives autodiff.forward's logits for any number of rows; a minibatch with
fewer rows than micro-batches (an epoch's short last batch) runs one micro-batch per row and
gives the same numbers.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from conftest import batches as _batches
from conftest import mlp_problem, oracle_training, rel_err

from graphpart.autodiff import forward, value_and_grad
from graphpart.engines import Engine
from graphpart.engines.wiring import wire
from graphpart.errors import PlanError
from graphpart.ir import mlp
from graphpart.optim import SGD, Adam, init_state, reference_step
from graphpart.plan import schedule as sch
from graphpart.plan.partition import partition

SIZES = [5, 4, 6, 3, 3]
BATCH = 8
STEPS = 3
OPTS = {
    "momentum": SGD(lr=0.05, momentum=0.9),
    "adam": Adam(lr=0.02),
}


def make_problem(activation="tanh", bias=True, loss="cross_entropy", seed=0):
    return mlp_problem(SIZES, BATCH * STEPS, seed=seed, activation=activation, bias=bias, loss=loss)


def batches(X, Y):
    return _batches(X, Y, BATCH)


def oracle(g, p0, X, Y, opt):
    return oracle_training(g, p0, X, Y, opt, BATCH)


PROBLEM = make_problem()
ORACLE = {name: oracle(*PROBLEM, opt) for name, opt in OPTS.items()}


@pytest.mark.parametrize("strategy", ["uniform", "balanced"])
@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
@pytest.mark.parametrize("microbatches", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("opt_name", sorted(OPTS))
def test_training_matches_oracle(opt_name, k, microbatches, kind, strategy):
    g, p0, X, Y = PROBLEM
    opt = OPTS[opt_name]
    Js, want = ORACLE[opt_name]
    eng = Engine(
        partition(g, k, strategy), p0, opt, microbatches=microbatches, schedule=kind, max_rows=BATCH
    )
    for t, (x, y) in enumerate(batches(X, Y)):
        r = eng.step(x, y)
        assert abs(r.J - Js[t]) <= 1e-10 * abs(Js[t]), t
        assert abs(r.J - (r.L + r.s)) <= 1e-14 * abs(r.J)
    got = eng.get_params()
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == np.float64
        assert rel_err(got[name], want[name]) < 1e-10, name
    for w, peak in zip(eng.transport.workers, eng.peak_in_flight, strict=True):
        assert w.stats().slots == peak
        assert w.steps == STEPS
    eng.close()


@pytest.mark.parametrize(
    ("activation", "bias", "loss"),
    [("relu", False, "mse"), ("sigmoid", True, "mse"), ("identity", False, "cross_entropy")],
)
@pytest.mark.parametrize(
    "opt",
    [SGD(lr=0.1), SGD(lr=0.05, momentum=0.5, weight_decay=0.01), Adam(lr=0.01, weight_decay=0.02)],
    ids=["sgd", "momentum-wd", "adam-wd"],
)
def test_other_models_and_optimizer_settings(activation, bias, loss, opt):
    g, p0, X, Y = make_problem(activation, bias, loss, seed=1)
    Js, want = oracle(g, p0, X, Y, opt)
    with Engine(
        partition(g, 3, "balanced"), p0, opt, microbatches=3, schedule="1f1b", max_rows=BATCH
    ) as eng:
        for t, (x, y) in enumerate(batches(X, Y)):
            assert abs(eng.step(x, y).J - Js[t]) <= 1e-10 * abs(Js[t])
        got = eng.get_params()
    for name in want:
        assert rel_err(got[name], want[name]) < 1e-10, name


def test_engine_does_not_modify_initial_params():
    g, p0, X, Y = make_problem(seed=2)
    copy = {k: v.copy() for k, v in p0.items()}
    eng = Engine(partition(g, 2, "uniform"), p0, OPTS["adam"], microbatches=2, max_rows=BATCH)
    eng.step(X[:BATCH], Y[:BATCH])
    for k in p0:
        np.testing.assert_array_equal(p0[k], copy[k])


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("microbatches", [1, 3, 8])
def test_value_and_grad_matches_oracle_without_updating(k, microbatches):
    g, p0, X, Y = PROBLEM
    x, y = X[:BATCH], Y[:BATCH]
    J, grads = value_and_grad(g, p0, {"x": x, "y": y})
    eng = Engine(
        partition(g, k, "balanced"),
        p0,
        OPTS["momentum"],
        microbatches=microbatches,
        schedule="gpipe",
        max_rows=BATCH,
    )
    for _ in range(2):  # twice: no gradient left over from the first call
        Je, ge = eng.value_and_grad(x, y)
        assert abs(Je - J) <= 1e-10 * abs(J)
        for name in grads:
            assert rel_err(ge[name], grads[name]) < 1e-10, name
    for name, v in eng.get_params().items():
        np.testing.assert_array_equal(v, p0[name])
    assert all(w.steps == 0 for w in eng.transport.workers)


def test_smaller_last_minibatch():
    g, p0, X, Y = PROBLEM
    opt = OPTS["momentum"]
    params = {k: v.copy() for k, v in p0.items()}
    state = init_state(opt, params)
    eng = Engine(partition(g, 3, "uniform"), p0, opt, microbatches=4, max_rows=BATCH)
    for t, n in enumerate((8, 5, 4), start=1):  # fewer rows than max_rows, uneven splits
        x, y = X[:n] * t, Y[:n]
        _, grads = value_and_grad(g, params, {"x": x, "y": y})
        reference_step(opt, params, grads, state, t)
        eng.step(x, y)
    got = eng.get_params()
    for name in params:
        assert rel_err(got[name], params[name]) < 1e-10, name


def test_engine_schedule_setup():
    g = PROBLEM[0]
    eng = Engine(
        partition(g, 4, "uniform"),
        PROBLEM[1],
        OPTS["adam"],
        microbatches=6,
        schedule="1f1b",
        max_rows=BATCH,
    )
    assert eng.kind == "1f1b" and eng.microbatches == 6
    assert eng.actions == sch.one_f_one_b(4, 6)
    assert eng.peak_in_flight == [4, 3, 2, 1]
    assert eng.wiring == wire("1f1b", 4, 6)
    gp = Engine(
        partition(g, 4, "uniform"),
        PROBLEM[1],
        OPTS["adam"],
        microbatches=6,
        schedule="gpipe",
        max_rows=BATCH,
    )
    assert gp.peak_in_flight == [6, 6, 6, 6]
    with pytest.raises(PlanError, match=r"schedule 'zigzag' is unknown"):
        Engine(
            partition(g, 2, "uniform"), PROBLEM[1], OPTS["adam"], schedule="zigzag", max_rows=BATCH
        )


# -- inference and errors -------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("chunk", [None, 1, 3, 4])
def test_predict_matches_autodiff_logits(k, chunk):
    g, p0, X, Y = PROBLEM
    eng = Engine(partition(g, k, "uniform"), p0, OPTS["adam"], microbatches=2, max_rows=BATCH)
    want = forward(g, p0, {"x": X, "y": Y})["o"]
    got = eng.predict(X) if chunk is None else eng.predict(X, chunk)
    assert got.shape == (len(X), SIZES[-1])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    eng.step(X[:BATCH], Y[:BATCH])  # after training, predict uses the updated parameters
    after = forward(g, eng.get_params(), {"x": X, "y": Y})["o"]
    np.testing.assert_allclose(eng.predict(X[:5]), after[:5], rtol=1e-12, atol=1e-14)


def test_predict_with_chunk_of_a_whole_minibatch():
    g, p0, X, Y = PROBLEM
    eng = Engine(partition(g, 2, "uniform"), p0, OPTS["adam"], microbatches=2, max_rows=BATCH)
    want = forward(g, p0, {"x": X, "y": Y})["o"]
    np.testing.assert_allclose(eng.predict(X, BATCH), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
def test_fewer_rows_than_microbatches_run_one_row_each(kind):
    """An epoch's short last batch: the step adapts to one micro-batch per row, same numbers."""
    g, p0, X, Y = PROBLEM
    eng = Engine(
        partition(g, 2, "uniform"), p0, OPTS["adam"], microbatches=8, schedule=kind, max_rows=BATCH
    )
    J, grads = eng.value_and_grad(X[:5], Y[:5])
    J_ref, g_ref = value_and_grad(g, p0, {"x": X[:5], "y": Y[:5]})
    assert rel_err(J, J_ref) < 1e-12
    for name in g_ref:
        assert rel_err(grads[name], g_ref[name]) < 1e-10, name
    assert eng.microbatches == 8  # full minibatches still run in 8
    with pytest.raises(PlanError, match="0 rows"):
        eng.step(X[:0], Y[:0])


def test_state_round_trip_between_engines():
    g, p0, X, Y = PROBLEM
    opt = OPTS["adam"]
    Js, want = ORACLE["adam"]
    plan = partition(g, 3, "balanced")
    a = Engine(plan, p0, opt, microbatches=2, max_rows=BATCH)
    steps = list(batches(X, Y))
    a.step(*steps[0])
    b = Engine(
        plan,
        {k: np.zeros_like(v) for k, v in p0.items()},
        opt,
        microbatches=4,
        schedule="gpipe",
        max_rows=BATCH,
    )
    b.set_state(a.get_state())
    for x, y in steps[1:]:
        b.step(x, y)
    got = b.get_params()
    for name in want:
        assert rel_err(got[name], want[name]) < 1e-10, name
    stats = b.stats()
    assert [s.stage for s in stats] == [0, 1, 2]
    assert len(b.events()) == 3


@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
def test_float32_training_tracks_float64_oracle(kind):
    g, p0, X, Y = PROBLEM
    opt = OPTS["momentum"]
    p32 = {k: v.astype(np.float32) for k, v in p0.items()}
    _, want = oracle(g, {k: v.astype(np.float64) for k, v in p32.items()}, X, Y, opt)
    eng = Engine(
        partition(g, 3, "uniform"), p32, opt, microbatches=4, schedule=kind, max_rows=BATCH
    )
    for x, y in batches(X, Y):
        r = eng.step(x.astype(np.float32), y)
        assert np.isfinite(r.J)
    got = eng.get_params()
    for name in want:
        assert got[name].dtype == np.float32, name
        assert rel_err(got[name], want[name]) < 1e-4, name
    assert eng.predict(X[:3]).dtype == np.float32


def test_workers_make_their_own_parameters_from_init():
    """params=Init(seed, dtype): each stage makes its own, equal to init_params of the graph."""
    from graphpart.params import Init, init_params

    g = mlp([5, 4, 6, 3, 3], activation="relu", bias=True)
    want = init_params(g, 7, "float64")
    for k in (1, 2, 4):
        eng = Engine(partition(g, k), Init(7, "float64"), SGD(lr=0.1), max_rows=8)
        got = eng.get_params()
        assert set(got) == set(want)
        assert all(np.array_equal(got[n], want[n]) and got[n].dtype == want[n].dtype for n in want)


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_thousands_of_steps_keep_memory_flat():
    """Training engines keep no per-step timeline (keep_events=False): memory stays flat."""
    g, p0, X, Y = PROBLEM
    eng = Engine(partition(g, 2, "uniform"), p0, OPTS["adam"], microbatches=2, max_rows=BATCH)
    x, y = X[:BATCH], Y[:BATCH]
    for _ in range(50):
        eng.step(x, y)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    for _ in range(1000):
        eng.step(x, y)
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 32 * 1024, f"{grown} bytes kept over 1000 steps"
    assert all(len(e) == 0 for e in eng.events())
