"""Inference over a transport.

Contract: `Engine.predict` gives every row's output in order, the reference forward's, on every
transport (in process, `push`, `shm`), for any chunk size, micro-batch count and more
rows than one inference step holds (several steps); on `shm` an evaluation goes through the
stages' channels and does not grow a stage's shared (object-store) resident memory, evaluation
after evaluation, where a chain of calls with large tensors does. For data parallelism
(graphpart/engines/inference.py), chunks sized to stay inside a Ray call (`inline_rows`: the
graph's widest batch-major value under INLINE_BYTES, at least one row) dealt to the replicas
give the one-engine outputs.
"""

from __future__ import annotations

import pytest
from conftest import mlp_problem, rel_err

from graphpart.autodiff import forward
from graphpart.engines import Engine, inference
from graphpart.engines.data_parallel import DataParallel
from graphpart.engines.inference import INLINE_BYTES, batch_widths, inline_rows
from graphpart.ir import mlp
from graphpart.optim import make_optimizer
from graphpart.plan.partition import partition


def test_inline_rows_fit_the_widest_value():
    assert inline_rows([784, 1536, 10], 4) == INLINE_BYTES // (1536 * 4)
    assert inline_rows([784, 1536, 10], 8) == INLINE_BYTES // (1536 * 8)
    assert inline_rows([10**7], 8) == 1  # one row even where a row alone is over the limit
    assert inline_rows([0], 4) == INLINE_BYTES // 4


def test_batch_widths_are_the_rows_of_inputs_activations_and_logits():
    widths = batch_widths(mlp([784, 1536, 10]))
    assert max(widths) == 1536 and 784 in widths and 10 in widths


@pytest.mark.parametrize("k,m,chunk", [(1, 1, None), (2, 3, 3), (3, 2, 1), (4, 4, None)])
def test_predict_in_process_is_the_forward_of_every_row(k, m, chunk):
    g, p0, X, y = mlp_problem([6, 5, 7, 4, 3], 21)
    want = forward(g, p0, {"x": X, "y": y})["o"]
    opt = make_optimizer("sgd", lr=0.1)
    with Engine(partition(g, k), p0, opt, microbatches=m, max_rows=8) as eng:  # 3 steps
        got = eng.predict(X, chunk=chunk)
    assert got.shape == (21, 3) and rel_err(got, want) < 1e-12


@pytest.mark.parametrize("transport", ["push", "shm"])
def test_predict_on_ray_is_the_forward_of_every_row(ray_session, transport):
    g, p0, X, y = mlp_problem([6, 5, 7, 4, 3], 21)
    want = forward(g, p0, {"x": X, "y": y})["o"]
    opt = make_optimizer("sgd", lr=0.1)
    with Engine(partition(g, 3), p0, opt, transport=transport, microbatches=2, max_rows=8) as e:
        assert rel_err(e.predict(X), want) < 1e-12
        assert rel_err(e.predict(X[:5], chunk=1), want[:5]) < 1e-12


def _shared(stats) -> list[int]:
    return [s.rss.parts_now["RssShmem"] for s in stats]


def test_evaluation_on_shm_does_not_grow_the_stages(ray_session):
    g, p0, X, y = mlp_problem([64, 1024, 1024, 10], 1024, seed=2)  # 8 KiB a boundary row
    opt = make_optimizer("sgd", lr=0.01)
    with Engine(partition(g, 2), p0, opt, transport="shm", microbatches=2, max_rows=256) as eng:
        ref = Engine(partition(g, 1), p0, opt, max_rows=256)
        eng.predict(X)
        before = _shared(eng.stats())
        for _ in range(3):
            assert rel_err(eng.predict(X), ref.predict(X)) < 1e-12
        after = _shared(eng.stats())
        assert all(a - b < 1 << 20 for a, b in zip(after, before, strict=True)), (before, after)
        # the contrast: a chain of calls with 128-row (1 MiB) tensors, through the object store
        for _ in range(3):
            inference.predict(eng.transport, X, 128, [range(2)], 3)
        grew = _shared(eng.stats())
        assert max(g - a for g, a in zip(grew, after, strict=True)) > 2 << 20, (after, grew)


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_data_parallel_predict_equals_one_engine(ray_session, chunk):
    g, p0, X, y = mlp_problem([6, 5, 3], 41, seed=3)  # chunks dealt to 3 replicas in turn
    opt = make_optimizer("sgd", lr=0.1)
    with DataParallel(partition(g, 1), p0, opt, replicas=3, max_rows=12) as dp:
        ref = Engine(partition(g, 1), p0, opt, max_rows=12)
        assert rel_err(dp.predict(X, chunk=chunk), ref.predict(X)) < 1e-12
