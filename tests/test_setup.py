"""What a run decides before it starts (graphpart.run.setup).

Contract: `workload_of(cfg)` reads the seven settings of a step (batch, micro-batches,
schedule, optimizer, momentum, dtype, recompute) from the config once, and `setup` keeps that
Workload; the memory prediction of a setup is the memory model's on that workload (per
replica with pipeline.data_parallel); a batch larger than the training rows is clamped with
one note; a budget the plan exceeds is a one-line ConfigError naming the budget.
"""

from __future__ import annotations

import pytest

from graphpart.errors import ConfigError
from graphpart.plan.memory import Workload, predict, predict_data_parallel
from graphpart.run.config import load_config
from graphpart.run.setup import check_budget, predicted_memory, setup, workload_of

OVER = {
    "model.hidden": [16],
    "train.batch_size": 40,
    "train.optimizer": "sgd",
    "train.momentum": 0.5,
    "train.dtype": "float64",
    "pipeline.stages": 2,
    "pipeline.microbatches": 4,
    "pipeline.schedule": "gpipe",
    "pipeline.recompute": True,
}


def test_the_workload_is_read_once_from_the_config():
    cfg = load_config(None, OVER)
    w = workload_of(cfg)
    assert w == Workload(
        batch=40,
        microbatches=4,
        schedule="gpipe",
        optimizer="sgd",
        momentum=0.5,
        dtype="float64",
        recompute=True,
    )
    assert w.slots == 1 and w.rows == 10
    s = setup(cfg)
    assert s.workload == w
    assert predicted_memory(s) == predict(s.plan, w, channels=True)  # the default shm transport
    push = setup(load_config(None, {**OVER, "pipeline.transport": "push"}))
    assert predicted_memory(push) == predict(push.plan, w)


def test_data_parallel_predicts_per_replica():
    over = {**OVER, "pipeline.stages": 1, "pipeline.data_parallel": 2, "pipeline.microbatches": 1}
    over["pipeline.transport"] = "push"  # the ring on Ray: no channel buffers
    s = setup(load_config(None, over))
    assert predicted_memory(s) == predict_data_parallel(s.plan, 2, s.workload)


def test_a_batch_over_the_rows_is_clamped_with_a_note():
    s = setup(load_config(None, {**OVER, "train.batch_size": 100000}))
    assert s.workload.batch == s.shape.n_train == s.config.train.batch_size
    assert len(s.notes) == 1 and "exceeds" in s.notes[0]


def test_a_plan_over_the_budget_is_refused_in_one_line():
    s = setup(load_config(None, {**OVER, "pipeline.memory_budget": "1KiB"}))
    with pytest.raises(ConfigError, match=r"memory_budget='1KiB': the plan does not fit"):
        check_budget(s)
