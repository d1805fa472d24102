"""Contract of graphpart/run/virtual_report.py (through `graphpart plan` and `train`): a
schedule with virtual stages is planned by device and chunk.

`plan --schedule interleaved --chunks v` (and `--schedule zbv`) prints the V = K x v virtual
stages with their device, chunk, slots and predicted memory, each device's virtual stages,
in-flight count and peak (the sum of its chunks'), the predicted bubble, the schedule drawn
with a row of chunks under each device, and the memory table by device; `--json` carries the
placement, the action lists in text form and the memory. Bad values are refused in one line
naming the value and what is valid (exit 2): chunks < 1, zbv with chunks != 2, chunks with a
one-stage schedule, more virtual stages than layers, a removed transport (`compiled`), and
commands that do not model them yet (hessian). `train --schedule zbv` in process
trains (a run directory with its summary).
"""

from __future__ import annotations

import json

import pytest

from graphpart.cli import main

MODEL = ["--hidden", "16,16,16,16,16"]  # six layers


def test_plan_prints_the_virtual_schedule_and_memory(capsys):
    assert main(["plan", *MODEL, "--stages", "2", "--schedule", "interleaved", "--chunks",
                 "3", "--microbatches", "3"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "2 device(s) x 3 chunk(s) = 6 virtual stages (interleaved placement)" in out
    assert "device  chunk" in out and "virtual stages  in-flight  peak memory" in out
    assert "predicted bubble" in out and "   chunk |" in out and "device 1 |" in out
    assert "predicted peak memory" in out
    assert main(["plan", *MODEL, "--stages", "3", "--schedule", "zbv", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["placement"] == "v" and data["chunks"] == 2
    assert data["owner"] == [0, 1, 2, 2, 1, 0]
    assert len(data["actions"]) == 3 and data["actions"][0].startswith("0F0")
    assert len(data["memory"]["stages"]) == 3  # by device
    stage_of_device = [sum(1 for o in data["owner"] if o == d) for d in range(3)]
    assert stage_of_device == [2, 2, 2]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--schedule", "zbv", "--chunks", "3"], "pipeline.chunks=3 with schedule 'zbv'"),
        (["--schedule", "interleaved", "--chunks", "0"], "--chunks: 0 is not 1 or more"),
        (["--schedule", "1f1b", "--chunks", "2"], "runs one stage a device"),
        (["--schedule", "interleaved", "--chunks", "4", "--stages", "2"],
         "needs 8 virtual stages, more than the model's 6 layers"),
        (["--schedule", "zbv", "--set", "pipeline.transport=compiled", "--stages", "2"],
         "pipeline.transport='compiled': must be one of auto, inprocess, push, shm; compiled was "
         "removed"),
        (["--schedule", "zbv", "--set", "pipeline.chunks=-2"], "pipeline.chunks=-2: must be"),
    ],
)  # fmt: skip
def test_bad_values_are_named(capsys, args, match):
    assert main(["plan", *MODEL, *args]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_hessian_refuses_virtual_stages(capsys):
    """profile runs virtual stages (tests/test_profile.py); the Hessian check does not yet."""
    assert main(["hessian", *MODEL, "--stages", "2", "--schedule", "zbv"]) == 2
    assert "graphpart hessian does not run schedule 'zbv'" in capsys.readouterr().err


def test_train_in_process(capsys, tmp_path):
    args = ["train", *MODEL, "--stages", "2", "--schedule", "zbv", "--microbatches", "3",
            "--transport", "inprocess", "--epochs", "1", "--run-dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert summary["state"] == "completed" and summary["schedule"] == "zbv"
