"""Contract of graphpart/run/report.py's plan report (`graphpart plan`).

With data parallelism the report is per replica: its memory column and data are the memory
model's data-parallel prediction (a replica's share of the rows in M micro-batches, plus the
all-reduce buffer), the same figure `graphpart train` checks a budget against, and the text
says how the batch is shared; without it, the pipeline's prediction, stage by stage.
"""

from __future__ import annotations

import pytest

from graphpart.run.report import plan_report
from graphpart.run.session import make_config
from graphpart.run.setup import predicted_memory, setup


@pytest.mark.parametrize(
    "over,says",
    [
        ({"pipeline.data_parallel": 2, "pipeline.microbatches": 4}, "2 data-parallel replicas"),
        ({"pipeline.data_parallel": 3}, "3 data-parallel replicas"),
        ({"pipeline.stages": 2, "pipeline.microbatches": 4}, "batch 64 in 4 micro-batch(es)"),
    ],
)
def test_the_plans_memory_is_what_train_checks(over, says):
    cfg = make_config(None, {"train.batch_size": 64, **over})
    s = setup(cfg)
    rep = plan_report(s, cfg)
    assert says in rep["text"]
    assert rep["data"]["memory"] == predicted_memory(s).to_dict()
    assert rep["data"]["data_parallel"] == cfg.pipeline.data_parallel
