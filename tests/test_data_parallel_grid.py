"""Data parallel x pipeline (graphpart.engines.DataParallel over a K-stage plan): R replicas of a
K-stage pipeline on R x K workers, stage k of every replica all-reducing its gradients with
stage k of the others (one ring per stage index).

Contract: in float64, for (R, K) in {(1, 2), (2, 2), (3, 2), (2, 3), (3, 3)}, every schedule of
graphpart.plan.schedule.KINDS and M = 1, 2, 4 micro-batches per replica, Adam steps with
weight decay give the oracle's J at every step (1e-12) and its parameters (1e-10), an epoch's
short last minibatch included (every replica's share smaller than M: one micro-batch per
row); stage k of every replica holds bit-identical parameters; each worker's ledger is, buffer
by buffer, the memory model's prediction of the layout (predict_data_parallel: its stage at
ceil(B / R) rows plus, R > 1, its ring channels in and out; the ring sums the gradients' own
buffer); close() removes every channel file
(each replica's chain, each stage's ring, each replica's feed). At R = 2, K = 2 also:
value_and_grad equals the oracle without updating; the state is replica 0's, one per stage,
and moves to and from a K-stage Engine; predict equals that Engine's; a killed worker is named
"replica r, stage k" in a one-line StageFailure within seconds, and (at R = 2, K = 3) so is a
failing one. Without
Ray: grid_edges lists each replica's chain and each stage's ring; a config with stages and
data_parallel sets up with a prediction for each of its R x K workers, which a memory budget
is checked against. `graphpart train --stages 2
--data-parallel 2 --microbatches 2 --schedule gpipe` builds that engine and trains to the
one-process run's parameters (1e-10).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import batches, max_rel, mlp_problem, oracle_training, rel_err

from graphpart.autodiff import value_and_grad
from graphpart.cli import main
from graphpart.engines import DataParallel, Engine
from graphpart.engines.data_parallel import replica_rows
from graphpart.engines.transports.ring import grid_edges
from graphpart.errors import StageFailure
from graphpart.optim import make_optimizer
from graphpart.plan.memory import Workload, budget_problem, predict_data_parallel
from graphpart.plan.partition import partition
from graphpart.plan.schedule import KINDS
from graphpart.run import setup as setup_mod
from graphpart.run.config import load_config
from graphpart.run.setup import predicted_memory, setup

SIZES = [6, 5, 7, 4, 3]
BATCH = 13  # full minibatches: every replica's share (4 to 7 rows) holds M = 4 micro-batches
LAST = 3  # the epoch's short last minibatch: every share (1 or 2 rows) is smaller than M = 4


def _adam():
    return make_optimizer("adam", lr=0.05, weight_decay=0.01)


def _existing(files: set[str]) -> set[str]:
    return {f for f in files if os.path.exists(f)}


# -- without Ray ----------------------------------------------------------------------------------
def test_grid_edges_are_each_replicas_chain_and_each_stages_ring():
    """Actor r * K + k: chains (r, k) -> (r, k + 1) first, then the rings (r, k) -> (r + 1, k)."""
    edges, rings = grid_edges(2, 3)
    assert edges == [(0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (3, 0), (1, 4), (4, 1), (2, 5), (5, 2)]
    assert rings == set(range(4, 10))
    assert grid_edges(1, 2) == ([(0, 1)], set())  # one replica: a pipeline, no ring
    assert grid_edges(3, 1) == ([(0, 1), (1, 2), (2, 0)], {0, 1, 2})  # one stage: one ring


TOML = """
[data]
source = "synthetic"
n_samples = 100
n_features = 6

[model]
hidden = [8, 5]

[train]
epochs = 1
batch_size = 11
dtype = "float64"
"""


def _config(tmp_path: Path, pipeline: str = "") -> str:
    path = tmp_path / "c.toml"
    path.write_text(TOML + ("\n[pipeline]\n" + pipeline if pipeline else ""))
    return str(path)


def test_a_config_with_stages_and_replicas_sets_up_and_a_budget_checks_every_worker(tmp_path):
    s = setup(load_config(_config(tmp_path, "stages = 2\ndata_parallel = 2\n"), {}))
    assert (s.plan.k, s.config.pipeline.data_parallel) == (2, 2)
    pred = predicted_memory(s)  # R x K workers, worker (r, k) at r K + k
    assert len(pred.stages) == 4 and pred.replicas == 2
    s2 = setup(
        load_config(
            _config(tmp_path, 'stages = 2\ndata_parallel = 2\nmemory_budget = "1KiB"\n'), {}
        )
    )
    assert s2.config.pipeline.memory_budget == "1KiB"
    assert budget_problem(predicted_memory(s2), 1024) is not None


# -- on Ray ---------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.parametrize(("r", "k"), [(1, 2), (2, 2), (3, 2), (2, 3), (3, 3)])
def test_replicated_pipelines_train_like_the_oracle(ray_session, r, k):
    """R x K workers, every schedule and M = 1, 2, 4 (one engine, rescheduled and reset to its
    start each time), the all-reduce overlapping the backward in a bucket a layer: the
    oracle's J and parameters, replicas bit-identical."""
    g, p0, X, y = mlp_problem(SIZES, 2 * BATCH + LAST, seed=7, weight_decay=0.05)
    oracle_Js, oracle = oracle_training(g, p0, X, y, _adam(), BATCH)
    assert max(len(mbs) for mbs in replica_rows(LAST, r, 4)) < 4  # the short shares
    plan = partition(g, k)
    # a bucket a layer, overlapped: the all-reduce runs beside the backward in several buckets
    dp = DataParallel(plan, p0, _adam(), replicas=r, max_rows=BATCH, bucket_bytes=0, overlap=True)
    files = {f for n in dp.transport.channels for f in (n.data, n.fifo)}
    try:
        ring_channels = k * r if r > 1 else 0
        assert len(_existing(files)) == 2 * (2 * r * (k - 1) + ring_channels + r)
        start = dp.get_state()
        assert len(start) == k
        dp.step(X[:BATCH], y[:BATCH])  # the ledgers, as built (M = 1, 1F1B)
        w = Workload(batch=BATCH, optimizer=_adam(), dtype="float64")
        want_mem = predict_data_parallel(plan, r, w, channels=True).stages
        for s, want in zip(dp.stats(), want_mem, strict=True):
            assert dict(s.memory.entries) == want.entries(), s.stage
            assert dict(s.memory.peak) == want.bytes, s.stage
        for sched in KINDS:
            for m in (1, 2, 4):
                dp.set_state(start)
                dp.reschedule(m, sched)
                for (xb, yb), J in zip(batches(X, y, BATCH), oracle_Js, strict=True):
                    assert rel_err(dp.step(xb, yb).J, J) < 1e-12, (sched, m, len(xb))
                got = dp.get_params()
                assert max_rel(oracle, got) < 1e-10, (sched, m)
                every = dp._all("get_params")  # replica-major: stage k of replica q at q * K + k
                for i, p in enumerate(every):
                    assert all(np.array_equal(p[n], every[i % k][n]) for n in p), (sched, m, i)
        stats = dp.stats()
        assert [s.stage for s in stats] == list(range(r * k))
        assert len({s.pid for s in stats}) == r * k
        if (r, k) == (2, 2):
            _state_inference_and_a_killed_worker(dp, plan, g, p0, X, y)
        if (r, k) == (2, 3):
            _a_failing_worker_is_named(dp, X, y)
    finally:
        dp.close()
    assert files and not _existing(files)  # close removed every channel file


def _state_inference_and_a_killed_worker(dp, plan, g, p0, X, y) -> None:
    """value_and_grad, state to and from a K-stage Engine, predict; then a killed worker,
    named (replica r, stage k)."""
    xb, yb = X[:BATCH], y[:BATCH]
    dp.set_state([{"params": p0, "opt": {}, "steps": 0}])  # one stage's state, split by stage
    assert max_rel(p0, dp.get_params()) == 0.0
    J, grads = value_and_grad(g, p0, {"x": xb, "y": yb})
    J2, grads2 = dp.value_and_grad(xb, yb)
    assert rel_err(J2, J) < 1e-12 and max_rel(grads, grads2) < 1e-12
    assert max_rel(p0, dp.get_params()) == 0.0  # no update
    dp.step(xb, yb)
    with Engine(plan, p0, _adam(), microbatches=2, max_rows=BATCH) as eng:
        eng.set_state(dp.get_state())  # replica 0's state, one per stage
        assert max_rel(dp.get_params(), eng.get_params()) == 0.0
        assert rel_err(dp.predict(X, chunk=2), eng.predict(X)) < 1e-12
        eng.step(X[BATCH : 2 * BATCH], y[BATCH : 2 * BATCH])
        dp.set_state(eng.get_state())  # and back, into every replica
        want = eng.get_params()
        for p in dp._all("get_params"):  # every worker: its own stage's parameters
            assert all(np.array_equal(p[n], want[n]) for n in p)
    os.kill(dp.transport.info[1]["pid"], signal.SIGKILL)  # replica 0's stage 1
    t0 = time.monotonic()
    with pytest.raises(StageFailure, match=r"^replica 0, stage 1's worker process died") as e:
        dp.step(xb, yb)
    assert "\n" not in str(e.value) and time.monotonic() - t0 < 10


def _a_failing_worker_is_named(dp, X, y) -> None:
    """A label out of range: the last replica's last stage fails in its loss, named (replica r,
    stage k) in one line; the others, waiting on it in the pipeline or the ring, are stopped."""
    bad = y[:BATCH].copy()
    bad[-1] = 99
    t0 = time.monotonic()
    with pytest.raises(StageFailure, match=r"^replica 1, stage 2 \(.*\) failed in forward of") as e:
        dp.step(X[:BATCH], bad)
    assert "\n" not in str(e.value) and time.monotonic() - t0 < 10


def _params(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "params.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.ray
def test_train_with_replicated_pipelines_equals_one_process(
    ray_session, tmp_path, monkeypatch, capsys
):
    """`graphpart train c.toml --stages 2 --data-parallel 2 --microbatches 2 --schedule gpipe`:
    DataParallel gets a two-stage plan, the replicas, M and the schedule, and the trained
    parameters equal the one-process run's (1e-10), the short last batch (3 rows) included."""
    seen: dict = {}
    real = setup_mod.DataParallel

    def spy(*args, **kw):
        seen.update(kw, stages=args[0].k)
        return real(*args, **kw)

    monkeypatch.setattr(setup_mod, "DataParallel", spy)
    cfg, runs = _config(tmp_path), tmp_path / "runs"
    common = [cfg, "--run-dir", str(runs), "--no-progress"]
    assert main(["train", *common, "--name", "one"]) == 0
    grid = ["--stages", "2", "--data-parallel", "2", "--microbatches", "2", "--schedule", "gpipe"]
    assert main(["train", *common, "--name", "grid", *grid]) == 0
    capsys.readouterr()
    assert (seen["stages"], seen["replicas"], seen["microbatches"]) == (2, 2, 2)
    assert seen["schedule"] == "gpipe"
    assert max_rel(_params(runs / "one"), _params(runs / "grid")) < 1e-10
