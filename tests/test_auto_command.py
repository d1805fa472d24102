"""Contract of `plan --auto`'s last line, `best: graphpart train ...`: run as printed, it trains
the setup ranked first, of the model plan --auto searched (the config file, every key the plan
command line changed, --memory-budget included, and the candidate's pipeline keys), with every
word shell-quoted. Checked through the real CLI entry point (graphpart.cli.main): the printed
words, parsed by `graphpart plan`, give the first row's stages, micro-batches, schedule and
the same config; run by `graphpart train --epochs 1` (Ray), they train that setup. --json
gives the rates measured alone and, by device count, together.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from graphpart.cli import build_parser, load_cli_config, main
from graphpart.plan.auto import Rates, search
from graphpart.plan.memory import Workload
from graphpart.run.session import make_config
from graphpart.run.train import setup
from graphpart.tools.compare.auto import rates_json, train_command, train_overrides

TOML = """
[model]
hidden = [48, 48, 48]
[data]
source = "synthetic"
n_samples = 256
n_features = 24
n_classes = 4
[train]
epochs = 3
batch_size = 64
optimizer = "adam"
"""
FLAGS = ["--batch-size", "32", "--hidden", "40,40,40"]
RATES = Rates(flops_per_s=5e10, copy_bytes_per_s=5e9, hop_s=50e-6)


@pytest.fixture()
def config_file(tmp_path: Path) -> str:
    """A config in a folder whose name needs quoting in a shell."""
    folder = tmp_path / "my configs"
    folder.mkdir()
    path = folder / "small model.toml"
    path.write_text(TOML)
    return str(path)


def _budget(path: str) -> str:
    """Below every one-device and data-parallel setup's peak: only pipelines fit."""
    cfg = make_config(path, {"train.batch_size": 32, "model.hidden": [40, 40, 40]})
    found = search(setup(cfg).graph, Workload(batch=32), devices=2, budget=None, rates=RATES)
    one = min(c.max_peak for c in found if c.kind != "pipeline")
    assert any(c.max_peak < one for c in found if c.kind == "pipeline")
    return f"{one - 1}B"


def _plan_auto(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[list[str], list[str]]:
    """Run `graphpart plan ... --auto`: the first table row and the best command's words."""
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    best = [line for line in out if line.startswith("best: ")]
    assert len(best) == 1, out
    header = next(i for i, line in enumerate(out) if line.startswith("rank "))
    return out[header + 2].split(), shlex.split(best[0].removeprefix("best: "))


@pytest.mark.ray  # plan --auto on 2 devices: 2 processes at once, and Ray's calls
def test_printed_command_reproduces_the_first_row(config_file, capsys, ray_session):
    """The printed words are `graphpart train` and options the real parser takes; as `plan`
    they give the first row's K, M and schedule (recompute and replicas through the config),
    the plan command's flags and budget, and the split plan --auto predicted."""
    budget = _budget(config_file)
    argv = ["plan", config_file, "--auto", "--devices", "2", "--memory-budget", budget, *FLAGS]
    row, words = _plan_auto(capsys, argv)
    assert words[:2] == ["graphpart", "train"]
    _rank, kind, K, M, schedule, recompute, replicas = row[:7]
    assert kind == "pipeline"  # only pipelines fit the budget
    cfg = load_cli_config(build_parser().parse_args(words[1:]))
    want = make_config(
        config_file,
        {
            "train.batch_size": 32,
            "model.hidden": [40, 40, 40],
            "pipeline.memory_budget": budget,
            "pipeline.stages": int(K),
            "pipeline.microbatches": int(M),
            "pipeline.schedule": schedule,
            "pipeline.recompute": recompute == "yes",
            "pipeline.data_parallel": int(replicas),
        },
    )
    assert cfg == want
    assert main(["plan", *words[2:], "--json"]) == 0  # the same words, as `graphpart plan`
    got = json.loads(capsys.readouterr().out)
    assert (len(got["stages"]), got["microbatches"], got["schedule"], got["batch"]) == (
        int(K),
        int(M),
        schedule,
        32,
    )
    assert got["strategy"] == "balanced"
    split = "+".join(str(len(st["layers"])) for st in got["stages"])
    assert split == row[7]


def test_command_names_the_config_file_and_only_what_differs(config_file):
    """Given the config file's path, the command names it (quoted) and `--set`s exactly the
    keys whose values differ from it; without a path, it sets every key that differs from the
    embedded config, and both load to the same config."""
    cfg = make_config(config_file, {"train.batch_size": 32, "pipeline.memory_budget": "1MiB"})
    best = search(setup(cfg).graph, Workload(batch=32), devices=3, budget=None, rates=RATES)[0]
    line = train_command(cfg, best, config_file)
    assert shlex.quote(config_file) in line and "'" in line  # the path has spaces
    words = shlex.split(line)
    assert words[2] == config_file
    sets = dict(w.split("=", 1) for w in words[4::2])
    assert words[3::2] == ["--set"] * len(sets)
    target = make_config(cfg, train_overrides(best)).to_dict()
    base = make_config(config_file).to_dict()
    differ = {f"{s}.{k}" for s, keys in target.items() for k, v in keys.items() if base[s][k] != v}
    assert set(sets) == differ
    assert {"train.batch_size", "pipeline.memory_budget"} <= differ
    for path, argv in ((config_file, words), (None, shlex.split(train_command(cfg, best)))):
        assert load_cli_config(build_parser().parse_args(argv[1:])) == make_config(
            cfg, train_overrides(best)
        ), path


def test_printed_command_trains_the_best_setup(config_file, capsys, tmp_path, ray_session):
    """Run as printed (plus --epochs 1 and a run folder), `graphpart train` trains the first
    row's setup under the budget: its run's config.toml holds that setup and the budget."""
    budget = _budget(config_file)
    argv = ["plan", config_file, "--auto", "--devices", "2", "--memory-budget", budget, *FLAGS]
    row, words = _plan_auto(capsys, argv)
    runs = tmp_path / "runs"
    more = ["--epochs", "1", "--run-dir", str(runs), "--json", "--no-progress"]
    assert main([*words[1:], *more]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] > 0
    cfg = make_config(str(Path(summary["run_dir"]) / "config.toml"))
    p = cfg.pipeline
    assert (p.stages, p.microbatches, p.schedule) == (int(row[2]), int(row[3]), row[4])
    assert (p.memory_budget, cfg.train.batch_size, cfg.model.hidden) == (budget, 32, (40,) * 3)


def test_json_gives_the_rates_alone_and_together():
    """--json's `rates`: the figures measured alone and, under `together`, each count of
    devices measured busy at once with its own figures and its ring's."""
    two = Rates(flops_per_s=4e10, copy_bytes_per_s=2e9, hop_s=50e-6, ring_copies=3.0,
                ring_hop_s=3e-5)  # fmt: skip
    got = json.loads(json.dumps(rates_json(Rates(5e10, 5e9, 50e-6, together=((2, two),)))))
    assert (got["flops_per_s"], got["copy_bytes_per_s"], got["hop_s"]) == (5e10, 5e9, 50e-6)
    assert got["ring_copies"] == 4.5 and got["ring_hop_s"] is None and "whole" not in got
    full = rates_json(Rates(5e10, 5e9, 50e-6, whole=Rates(9e10, 5e9, 50e-6)))
    assert full["whole"]["flops_per_s"] == 9e10 and full["whole"]["together"] == []
    (t,) = got["together"]
    assert t == {
        "devices": 2,
        "flops_per_s": 4e10,
        "copy_bytes_per_s": 2e9,
        "hop_s": 50e-6,
        "ring_copies": 3.0,
        "ring_hop_s": 3e-5,
        "call_s": 0.0,
        "together": [],
    }
