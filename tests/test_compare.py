"""`graphpart compare`: every strategy trains the same model from the same start, side by side.

Contract: strategies a-g are the setups the issue names (overrides checked); a, c, d, e, f and g
compute the same gradient of the same minibatch and end with the same float64 parameters (1e-10
relative); b scales the learning rate by the chosen rule and says so; a budget the one-device
model does not fit skips a (and f, which holds the same state) with "does not fit: needs X on
device k, budget Y" and still runs the pipelines; the report folder holds report.md, its PNGs
and compare.json, and its conclusion is computed from the figures; Ctrl-C keeps the report of
what finished and exits 130; an existing comparison is never overwritten; plan --auto's best
proposal of each kind, trained, peaks within 10% of its predicted memory on every device.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import max_rel

from graphpart.errors import ConfigError
from graphpart.plan.auto import Rates, search
from graphpart.run.config import load_config
from graphpart.run.train import setup, train
from graphpart.tools.compare import command as cmd_mod
from graphpart.tools.compare import runner as runner_mod
from graphpart.tools.compare.command import run_compare
from graphpart.tools.compare.strategies import auto_strategy, make_strategies, scaled_lr


def _cfg(tmp_path: Path, **over):
    base = {
        "data.source": "synthetic",
        "data.n_samples": 240,
        "data.n_features": 12,
        "model.hidden": [16, 16, 16],
        "model.activation": "tanh",
        "model.weight_decay": 0.01,
        "train.epochs": 2,
        "train.batch_size": 32,
        "train.dtype": "float64",
        "run.dir": str(tmp_path / "runs"),
    }
    base.update(over)
    return load_config(None, base)


def _params(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "params.npz") as z:
        return {k: z[k] for k in z.files}


def test_strategies_are_the_named_setups(tmp_path):
    cfg = _cfg(tmp_path)
    got = {s.key: s for s in make_strategies(cfg, 2, 4, "linear", n_layers=4)}
    assert list(got) == ["a", "b", "c", "d", "e", "f", "g"]
    assert got["b"].overrides["train.batch_size"] == 16
    assert got["b"].overrides["train.lr"] == pytest.approx(cfg.train.lr / 2)
    assert "linear rule" in got["b"].title
    assert got["c"].overrides["pipeline.microbatches"] == 2
    assert got["d"].overrides["pipeline.schedule"] == "gpipe"
    assert got["e"].overrides["pipeline.schedule"] == "1f1b"
    assert got["f"].overrides["pipeline.data_parallel"] == 2
    assert got["g"].overrides["pipeline.recompute"] is True
    assert scaled_lr(0.01, 64, 16, "sqrt") == pytest.approx(0.005)
    assert scaled_lr(0.01, 64, 16, "none") == 0.01


@pytest.mark.parametrize(
    "devices, layers, msg",
    [(1, 4, "at least 2 devices"), (5, 4, "at most 4 stages"), (40, 64, "at least one row")],
)
def test_impossible_device_counts_are_named(tmp_path, devices, layers, msg):
    with pytest.raises(ConfigError, match=msg):
        make_strategies(_cfg(tmp_path), devices, 2, "linear", n_layers=layers)


def test_all_strategies_end_equal_and_report(tmp_path, ray_session):
    report = tmp_path / "cmp"
    code = run_compare(
        _cfg(tmp_path), devices=2, microbatches=2, report=str(report), log=lambda m: None
    )
    assert code == 0
    data = json.loads((report / "compare.json").read_text())
    rows = {r["key"]: r for r in data["strategies"]}
    assert all(rows[k]["status"] == "ran" for k in "abcdefg"), rows
    ref = _params(report / "runs" / "a")
    for k in "cdefg":
        assert max_rel(ref, _params(report / "runs" / k)) < 1e-10, k
    assert max_rel(ref, _params(report / "runs" / "b")) > 1e-6  # other steps, other lr
    # memory as the issue expects: pipelines split the state, replicas and b do not
    a = rows["a"]["ledger_memory"][0]
    state = lambda d: d["parameter"] + d["gradient"] + d["optimizer"]  # noqa: E731
    for k in "de":
        worst = max(state(d) for d in rows[k]["ledger_memory"])
        assert worst < 0.8 * state(a)
    for d in rows["f"]["ledger_memory"]:
        assert state(d) == state(a)
    b = rows["b"]["ledger_memory"][0]
    assert state(b) == state(a) and b["activation"] <= 0.6 * a["activation"]
    # "measured" is the OS's figure (each worker process's resident growth), the ledger apart
    for k in "abcdefg":
        r = rows[k]
        assert len(r["resident_growth"]) == r["devices"] and min(r["resident_growth"]) >= 0
        assert r["measured_peak"] == max(r["resident_growth"])
        assert r["ledger_peak"] == max(d["total"] for d in r["ledger_memory"])
    assert "peak/device meas. (OS)" in (report / "report.md").read_text()
    assert rows["a"]["comm_bytes_per_step"] == 0 and rows["e"]["comm_bytes_per_step"] > 0
    assert rows["e"]["bubble"] is not None and 0 < rows["e"]["bubble"] < 1
    for name in ("report.md", "memory.png", "curves.png", "throughput.png", "schedule.png"):
        assert (report / name).stat().st_size > 0, name
    text = (report / "report.md").read_text()
    assert "## Conclusion" in text and "B*=" in text
    with pytest.raises(ConfigError, match="already holds a comparison"):
        run_compare(_cfg(tmp_path), devices=2, report=str(report), log=lambda m: None)


def test_budget_skips_what_does_not_fit(tmp_path, ray_session):
    report = tmp_path / "cmp"
    cfg = _cfg(tmp_path, **{"model.hidden": [64, 64, 64], "data.n_features": 64})
    # between the pipelines' largest stage and one device's peak
    run_compare(cfg, devices=2, microbatches=2, report=str(report), log=lambda m: None)
    rows = {r["key"]: r for r in json.loads((report / "compare.json").read_text())["strategies"]}
    budget = (rows["a"]["predicted_peak"] + rows["e"]["predicted_peak"]) // 2
    report2 = tmp_path / "cmp2"
    cfg2 = _cfg(
        tmp_path,
        **{
            "model.hidden": [64, 64, 64],
            "data.n_features": 64,
            "pipeline.memory_budget": str(budget),
            "run.dir": str(tmp_path / "runs2"),
        },
    )
    run_compare(cfg2, devices=2, microbatches=2, report=str(report2), log=lambda m: None)
    got = {r["key"]: r for r in json.loads((report2 / "compare.json").read_text())["strategies"]}
    for k in "acf":
        assert got[k]["status"] == "does not fit", k
        assert "does not fit: needs" in got[k]["problem"] and "budget" in got[k]["problem"]
        assert not (report2 / "runs" / k).exists()
    for k in "deg":
        assert got[k]["status"] == "ran", k
    assert "did not fit and were not run" in (report2 / "report.md").read_text()


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_ctrl_c_keeps_the_report_of_what_finished(tmp_path, monkeypatch):
    calls = []
    real = runner_mod.train

    def train(cfg, **kw):
        calls.append(cfg)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, **kw)

    monkeypatch.setattr(runner_mod, "train", train)
    monkeypatch.setattr(cmd_mod, "start_ray", lambda *a, **k: False)
    report = tmp_path / "cmp"
    code = run_compare(_cfg(tmp_path), devices=2, report=str(report), log=lambda m: None)
    assert code == 130
    data = json.loads((report / "compare.json").read_text())
    assert data["interrupted"] is True
    status = [r["status"] for r in data["strategies"]]
    assert status == ["ran", "interrupted"]
    assert "Interrupted" in (report / "report.md").read_text()


def test_auto_proposals_run_within_their_predicted_memory(tmp_path, ray_session):
    """plan --auto's proposals, trained, hold what the search predicted on every device."""
    cfg = _cfg(tmp_path, **{"train.epochs": 1, "train.dtype": "float32"})
    s = setup(cfg)
    found = search(
        s.graph,
        devices=2,
        budget=None,
        batch=cfg.train.batch_size,
        rates=Rates(flops_per_s=1e10, copy_bytes_per_s=5e9, hop_s=1e-4),
    )
    picked = {}
    for c in found:  # the best of each kind
        picked.setdefault((c.kind, c.recompute), c)
    assert {k for k, _ in picked} == {"single", "accumulate", "pipeline", "data-parallel"}
    for i, c in enumerate(picked.values()):
        overrides = dict(c.config())
        overrides["pipeline.transport"] = "auto" if c.devices > 1 else "inprocess"
        st = auto_strategy(overrides, c.kind, c.devices)
        run = runner_mod.strategy_config(cfg, st, tmp_path / f"auto{i}")
        summary = train(run, progress=False, log=lambda m: None)
        measured = [x["peak_bytes"] for x in summary["stage_stats"]]
        assert len(measured) == len(c.peak_bytes), c
        for got, want in zip(measured, c.peak_bytes, strict=True):
            assert abs(got - want) <= 0.10 * want, (c.kind, c.config(), got, want)
