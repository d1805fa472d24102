"""Contract of graphpart/tools/profile.py (`graphpart profile`): measure, compare, plot, trace.

run_profile(cfg, steps, out) runs `steps` training steps and prints, per stage, predicted vs
measured peak bytes by category with their ratio (1.000 everywhere: the model is exact), the
resident memory of each process and the measurement overhead; with inference=True also the
predicted inference memory and the "training needs N.Nx the memory of inference" line; with
as_json=True the same as one JSON object. It writes out/memory_stage{k}.png for every stage
and out/trace.json, a Chrome trace whose traceEvents hold one "X" span per forward and backward
of every micro-batch on every stage (pid = stage) and "C" memory counters. On the in-process
engine and on every Ray actor (each worker measures its own process), resident-memory growth
for a model whose state is at least 200 MB is within 25% of the predicted total.
spans() pairs F/F_end and B/B_end marks per micro-batch. Workers are named by the layout:
"stage k", "replica r", or "replica r, stage k" for R replicas of a K-stage pipeline (2-D),
whose every worker's ledger equals predict_data_parallel's prediction.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graphpart.errors import ConfigError
from graphpart.plan.memory import CATEGORIES, Workload, predict
from graphpart.run.config import Config, load_config
from graphpart.run.setup import predicted_memory
from graphpart.run.train import setup
from graphpart.tools import profile
from graphpart.tools.profile.compare import traced_rows


def _cfg(**pipeline) -> Config:
    return Config.from_dict(
        {
            "model": {"hidden": [24, 16], "bias": True, "weight_decay": 1e-4},
            "data": {"source": "digits"},
            "train": {"batch_size": 32, "optimizer": "adam"},
            "pipeline": {
                "stages": 2,
                "microbatches": 4,
                "schedule": "1f1b",
                "runtime": "local",
                **pipeline,
            },
        }
    )


def _check_outputs(out: Path, stages: int, steps: int, microbatches: int) -> dict:
    for k in range(stages):
        png = out / f"memory_stage{k}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trace = json.loads((out / "trace.json").read_text())
    ev = trace["traceEvents"]
    xs = [e for e in ev if e["ph"] == "X"]
    assert len(xs) == stages * steps * microbatches * 2
    for k in range(stages):
        mine = [e for e in xs if e["pid"] == k]
        assert sorted(e["name"] for e in mine if e["cat"] == "forward") == sorted(
            f"F{m}" for m in range(microbatches) for _ in range(steps)
        )
        assert all(e["dur"] >= 0 for e in mine)
        counters = [
            e for e in ev if e["ph"] == "C" and e["pid"] == k and e["name"] == "memory (bytes)"
        ]
        assert counters and set(counters[-1]["args"]) == set(CATEGORIES)
    return trace


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_run_profile_writes_table_pngs_and_trace(tmp_path, capsys):
    cfg = _cfg()
    assert profile.run_profile(cfg, steps=2, out=tmp_path, inference=True) == 0
    text = capsys.readouterr().out
    for k in range(2):
        assert f"stage {k} (pid" in text
    assert "measured peak" in text and "ratio" in text
    assert text.count(" 1.000") >= 2 * 6  # every non-empty category, both stages
    assert "resident memory" in text and "measurement overhead" in text
    assert "training needs" in text and "x the memory of inference" in text
    _check_outputs(tmp_path, stages=2, steps=2, microbatches=4)


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_run_profile_json_is_exact(tmp_path, capsys):
    cfg = _cfg(schedule="gpipe", recompute=True)
    assert profile.run_profile(cfg, steps=2, out=tmp_path, as_json=True) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["runtime"] == "local" and len(res["step_s"]) == 2
    for st in res["comparison"]:
        for c, v in st["categories"].items():
            assert v["predicted"] == v["measured"], (st["stage"], c)
    assert res["rss"] and res["rss"][0]["stages"] == [0, 1]
    assert res["overhead"]["events_per_step"] > 0
    assert res["files"]["trace"].endswith("trace.json")


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_measure_matches_prediction_and_resident_growth():
    """A model whose state is >= 200 MB, two stages in process: RSS growth over the first
    worker's baseline (after its warm-up, as a Ray worker takes its own) within 5% of the
    predicted total."""
    cfg = Config.from_dict(
        {
            "model": {"hidden": [3072, 3072], "bias": True, "weight_decay": 0.0},
            "data": {"source": "synthetic", "n_samples": 160, "n_features": 1024},
            "train": {"batch_size": 64, "optimizer": "adam"},
            "pipeline": {"stages": 2, "microbatches": 2, "runtime": "local"},
        }
    )
    s = setup(cfg)
    pred = predict(
        s.plan, Workload(batch=64, microbatches=2, schedule="1f1b", optimizer=s.optimizer)
    )
    assert (
        pred.total
        - sum(
            st.bytes["activation"] + st.bytes["workspace"] + st.bytes["boundary"]
            for st in pred.stages
        )
        >= 200e6
    )
    m = profile.measure(s, steps=2)
    for st, sp in zip(m.stats, pred.stages, strict=True):
        assert st.memory.peak == sp.bytes
    (row,) = m.rss
    assert row["growth"] == pytest.approx(pred.total, rel=0.05), row["growth"] / pred.total


def test_spans_and_trace_from_events():
    zero = (0,) * len(CATEGORIES)
    act = (10, 10, 20, 8, 0, 4)
    events = [
        (0.0, "alloc", "param:W1", zero),
        (0.1, "F", "0", act),
        (0.2, "F_end", "0", act),
        (0.3, "F", "1", act),
        (0.4, "F_end", "1", act),
        (0.5, "B", "1", act),
        (0.6, "B_end", "1", act),
        (0.7, "B", "0", act),
        (0.8, "B_end", "0", act),
        (0.9, "step", "1", act),
        (1.0, "F", "0", act),
        (1.1, "F_end", "0", act),
    ]
    sp = profile.spans(events)
    assert [(s["kind"], s["mb"], s["step"]) for s in sp] == [
        ("F", 0, 1),
        ("F", 1, 1),
        ("B", 1, 1),
        ("B", 0, 1),
        ("F", 0, 2),
    ]
    assert sp[2]["start"] == 0.5 and sp[2]["end"] == 0.6
    m = profile.Measurement("ray", [{}], [events], [0.0], False, [1.0])
    tr = profile.chrome_trace(m)
    xs = [e for e in tr["traceEvents"] if e["ph"] == "X"]
    assert [e["ts"] for e in xs] == pytest.approx([1e5, 3e5, 5e5, 7e5, 1e6])
    assert sum(e["ph"] == "C" for e in tr["traceEvents"]) >= len(events)
    assert "own ledger" in tr["otherData"]["alignment"]


def test_steps_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="steps=0"):
        profile.run_profile(_cfg(), steps=0, out=tmp_path)


def test_resident_growth_on_ray_actors(ray_session):
    """Two actors, each holding >= 200 MB of state: each worker's RSS growth within 5% of the
    prediction, and the NumPy arrays tracemalloc saw in it equal to the ledger's."""
    cfg = Config.from_dict(
        {
            "model": {"hidden": [4096, 4096, 4096], "bias": True, "weight_decay": 0.0},
            "data": {"source": "synthetic", "n_samples": 300, "n_features": 64},
            "train": {"batch_size": 128, "optimizer": "adam"},
            "pipeline": {"stages": 2, "microbatches": 2, "runtime": "ray"},
        }
    )
    s = setup(cfg)
    pred = predict(
        s.plan, Workload(batch=128, microbatches=2, schedule="1f1b", optimizer=s.optimizer)
    )
    assert all(st.bytes["parameter"] * 4 >= 200 * 2**20 for st in pred.stages)
    m = profile.measure(s, steps=2)
    assert len(m.rss) == 2
    for row in m.rss:
        (k,) = row["stages"]
        assert row["growth"] == pytest.approx(pred.stages[k].total, rel=0.05), row
    traced = traced_rows(m)
    assert [r["stage"] for r in traced] == [0, 1]
    assert all(r["arrays"] == r["ledger_arrays"] > 0 for r in traced), traced


def test_run_profile_on_ray(ray_session, tmp_path, capsys):
    cfg = _cfg(runtime="ray", microbatches=2)
    assert profile.run_profile(cfg, steps=2, out=tmp_path, as_json=True) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["runtime"] == "ray"
    for st in res["comparison"]:
        assert all(v["predicted"] == v["measured"] for v in st["categories"].values())
    assert {r["pid"] for r in res["rss"]} == {st["pid"] for st in res["comparison"]}
    assert [r["ratio"] for r in res["traced"]] == [1.0, 1.0]  # tracemalloc: the ledger's arrays
    trace = _check_outputs(tmp_path, stages=2, steps=2, microbatches=2)
    assert "own ledger" in trace["otherData"]["alignment"]


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_an_earlier_profile_is_kept_unless_forced(tmp_path, capsys):
    """A folder holding an earlier profile is refused in one line; with force, the earlier
    stage plots are removed first, so none of a 2-stage run stays beside a 1-stage one."""
    from graphpart.errors import ConfigError

    assert profile.run_profile(_cfg(), steps=1, out=tmp_path) == 0
    assert (tmp_path / "memory_stage1.png").exists()
    one = load_config(None, {"model.hidden": [16], "pipeline.stages": 1})
    with pytest.raises(ConfigError, match="holds an earlier profile .*--force to replace it"):
        profile.run_profile(one, steps=1, out=tmp_path)
    assert profile.run_profile(one, steps=1, out=tmp_path, force=True) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.glob("memory_stage*.png")) == ["memory_stage0.png"]


def test_run_profile_of_data_parallel_replicas(ray_session, tmp_path, capsys):
    """profile --data-parallel 2: one row per replica, each replica's ledger equal to the
    data-parallel prediction (all-reduce buffer and ring channels included), and each
    replica process's resident growth measured by the OS."""
    cfg = _cfg(runtime="ray", stages=1, microbatches=1, data_parallel=2)
    assert profile.run_profile(cfg, steps=2, out=tmp_path, as_json=True) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["runtime"] == "ray" and len(res["comparison"]) == 2
    assert res["prediction"]["schedule"] == "data-parallel"
    for st in res["comparison"]:
        assert all(v["predicted"] == v["measured"] for v in st["categories"].values())
    assert {r["pid"] for r in res["rss"]} == {st["pid"] for st in res["comparison"]}
    assert [r["ratio"] for r in res["traced"]] == [1.0, 1.0]  # tracemalloc: the ledger's arrays
    assert all(r["growth"] > 0 for r in res["rss"])


def test_worker_names_of_every_layout():
    """Workers are named by the layout, in the engines' replica-major order (index r K + k):
    "stage k" for a pipeline, "replica r" for data parallelism, "replica r, stage k" (short
    "r0 s1") for R replicas of a K-stage pipeline."""
    from graphpart.tools.profile.workers import worker_names

    assert worker_names(3, 1) == ["stage 0", "stage 1", "stage 2"]
    assert worker_names(1, 2) == ["replica 0", "replica 1"]
    assert worker_names(2, 2) == [
        "replica 0, stage 0",
        "replica 0, stage 1",
        "replica 1, stage 0",
        "replica 1, stage 1",
    ]
    assert worker_names(3, 2, short=True)[4] == "r1 s1"


def test_run_profile_of_a_2d_run(ray_session, tmp_path, capsys):
    """profile --stages 2 --data-parallel 2: four workers, each named (replica r, stage k),
    each one's ledger equal to predict_data_parallel's 2-D prediction category by category,
    each process's resident growth measured by the OS, its traced arrays equal to its
    ledger's, and a memory plot per worker."""
    cfg = _cfg(runtime="ray", stages=2, microbatches=2, data_parallel=2)
    assert profile.run_profile(cfg, steps=2, out=tmp_path, as_json=True) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["prediction"]["replicas"] == 2 and len(res["comparison"]) == 4
    assert [st["worker"] for st in res["comparison"]] == [
        f"replica {r}, stage {k}" for r in (0, 1) for k in (0, 1)
    ]
    for st in res["comparison"]:
        assert all(v["predicted"] == v["measured"] for v in st["categories"].values()), st
        assert st["categories"]["workspace"]["measured"] > 0  # the stage's all-reduce buffer
    assert {r["pid"] for r in res["rss"]} == {st["pid"] for st in res["comparison"]}
    assert all(r["growth"] > 0 and r["parts_growth"] for r in res["rss"])
    assert [r["ratio"] for r in res["traced"]] == [1.0] * 4
    assert len(res["files"]["png"]) == 4


@pytest.mark.parametrize("schedule", ["zbv", "interleaved"])
def test_run_profile_of_virtual_stages(ray_session, tmp_path, capsys, schedule):
    """profile --schedule zbv (or interleaved) --stages 2: four virtual stages on two devices;
    each virtual stage's ledger equal to its chunk's prediction category by category; one
    resident row a device process, holding its two chunks, measured against the sum of their
    predictions (predict_virtual's device total); its traced arrays equal to its two ledgers."""
    cfg = Config.from_dict(
        {
            "model": {"hidden": [24, 16, 16], "bias": True, "weight_decay": 1e-4},
            "data": {"source": "digits"},
            "train": {"batch_size": 32, "optimizer": "adam"},
            "pipeline": {"stages": 2, "microbatches": 4, "schedule": schedule, "runtime": "ray"},
        }
    )
    assert profile.run_profile(cfg, steps=2, out=tmp_path, as_json=True) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["comparison"]) == 4
    for st in res["comparison"]:
        assert all(v["predicted"] == v["measured"] for v in st["categories"].values()), st
    rows = res["rss"]
    assert len(rows) == 2 and sorted(len(r["stages"]) for r in rows) == [2, 2]
    device = predicted_memory(setup(cfg))
    assert sorted(sum(res["comparison"][k]["categories"]["total"]["predicted"] for k in r["stages"])
                  for r in rows) == sorted(st.total for st in device.stages)  # fmt: skip
    assert all(r["growth"] > 0 for r in rows)
    assert [r["ratio"] for r in res["traced"]] == [1.0, 1.0]
    assert len(res["files"]["png"]) == 4
