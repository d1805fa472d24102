"""Contract of graphpart/run/report.py's plan report (`graphpart plan`).

With data parallelism the report is per replica: its memory column and data are the memory
model's data-parallel prediction (a replica's share of the rows in M micro-batches, plus the
all-reduce buffer), the same figure `graphpart train` checks a budget against, and the text
says how the batch is shared; without it, the pipeline's prediction, stage by stage.
summary.json's `allreduce_critical_path` sets each stage's replicas' last all-reduces side by
side (workers' index r K + k: stage k of replica r), over the steps they all keep; None with one
replica, or where a stage's replicas are on different machines (clocks that do not compare).
"""

from __future__ import annotations

import pytest

from graphpart.engines import Rss, StageStats
from graphpart.run.report import allreduce_path, plan_report
from graphpart.run.session import make_config
from graphpart.run.setup import predicted_memory, setup
from workers.stats import Busy, LedgerSnapshot, ReduceMark


def _worker(index: int, marks: list[ReduceMark], node: str = "h1") -> StageStats:
    return StageStats(
        stage=index,
        pid=100 + index,
        busy=Busy(),
        bytes_sent=0,
        bytes_received=0,
        slots=1,
        memory=LedgerSnapshot({}, {}, 0, 0.0),
        rss=Rss(0, 0, 0, None, "samples"),
        reduce_marks=tuple(marks),
        node=node,
    )


def test_the_summary_sets_each_stages_replicas_side_by_side():
    a = [ReduceMark(1.0, 2.0, 1.0, 0.5), ReduceMark(5.0, 5.5, 0.5, 0.25)]
    b = [ReduceMark(0.0, 0.5, 0.5), ReduceMark(1.5, 2.25, 1.0, 0.5), ReduceMark(4.0, 5.5, 1.5)]
    # K = 2: workers 0 and 2 are stage 0 of replicas 0 and 1; 1 and 3 stage 1
    stats = [_worker(0, a), _worker(1, b), _worker(2, b[1:]), _worker(3, b)]
    s0, s1 = allreduce_path(stats, 2)
    # stage 0: steps (a0, b1): last compute 1.5 -> exposed 0.75, (a1, b2): 5.0 -> 0.5
    assert s0 == {"stage": 0, "steps": 2, "exposed_s": 0.625, "polled_s": 0.375,
                  "own_s": 0.75, "wait_s": 0.75}  # fmt: skip
    assert s1["steps"] == 3 and s1["wait_s"] == 0.0  # the same marks twice
    assert allreduce_path(stats[:1], 1) is None  # one replica
    assert allreduce_path([_worker(0, a), _worker(1, a, "h2")], 1) is None  # two machines


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
