"""Data parallelism with micro-batches per replica, as a user runs it: a config and the CLI.

Contract: a config file with pipeline.data_parallel = R and pipeline.microbatches = M sets up
(the workload carries M; micro-batches are per replica) and one with M over the smallest
replica's share of a minibatch is refused in one line naming the values; `graphpart train
--data-parallel 2 --microbatches 4` builds DataParallel with 2 replicas of 4 micro-batches each
and trains to the parameters of the same run on one process without micro-batches (float64,
1e-10), an epoch's short last minibatch (3 rows: shares of 2 and 1 rows, fewer than M) included,
and its run directory records both settings; its summary.json sets the replicas' all-reduces
side by side (a step's communication after the last replica's backward, and the wait for it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import max_rel

from graphpart.cli import main
from graphpart.errors import ConfigError
from graphpart.run import setup as setup_mod
from graphpart.run.config import load_config
from graphpart.run.setup import check_last_batch, setup

# 100 synthetic rows, 80 for training: minibatches of 11 rows, the last one of 3
TOML = """
[data]
source = "synthetic"
n_samples = 100
n_features = 6

[model]
hidden = [8]

[train]
epochs = 1
batch_size = 11
dtype = "float64"
"""


def _config(tmp_path: Path, pipeline: str = "") -> str:
    path = tmp_path / "c.toml"
    path.write_text(TOML + ("\n[pipeline]\n" + pipeline if pipeline else ""))
    return str(path)


def _params(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "params.npz") as z:
        return {k: z[k] for k in z.files}


def test_a_config_file_with_replicas_and_micro_batches_sets_up(tmp_path):
    """[pipeline] data_parallel = 2, microbatches = 4 (at most floor(11 / 2) = 5): set up with
    M = 4 in the workload, the short last batch accepted; microbatches = 6 refused in one line
    naming the three values and the valid range."""
    s = setup(load_config(_config(tmp_path, "data_parallel = 2\nmicrobatches = 4\n"), {}))
    assert (s.config.pipeline.data_parallel, s.workload.microbatches) == (2, 4)
    assert s.shape.n_train % s.workload.batch == 3  # the short last minibatch
    check_last_batch(s)  # 3 rows feed 2 replicas, though fewer than M each
    with pytest.raises(ConfigError) as e:
        load_config(_config(tmp_path, "data_parallel = 2\nmicrobatches = 6\n"), {})
    msg = str(e.value)
    assert "\n" not in msg
    assert "pipeline.microbatches=6 with pipeline.data_parallel=2 and train.batch_size=11" in msg
    assert "use microbatches 1..5" in msg


def test_train_with_replicas_accumulating_micro_batches_equals_one_process(
    ray_session, tmp_path, monkeypatch, capsys
):
    """`graphpart train c.toml --data-parallel 2 --microbatches 4`: DataParallel gets both, and
    the trained parameters equal the one-process run's (1e-10); config.toml records them."""
    seen: dict = {}
    real = setup_mod.DataParallel

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(setup_mod, "DataParallel", spy)
    cfg, runs = _config(tmp_path), tmp_path / "runs"
    common = [cfg, "--run-dir", str(runs), "--no-progress"]
    assert main(["train", *common, "--name", "one"]) == 0
    dp = ["--name", "dp", "--data-parallel", "2", "--microbatches", "4"]
    assert main(["train", *common, *dp]) == 0
    capsys.readouterr()
    assert (seen["replicas"], seen["microbatches"]) == (2, 4)
    assert max_rel(_params(runs / "one"), _params(runs / "dp")) < 1e-10
    recorded = load_config(str(runs / "dp" / "config.toml"), {}).pipeline
    assert (recorded.data_parallel, recorded.microbatches) == (2, 4)
    # summary.json sets the replicas' all-reduces side by side, a step's mean; none on one
    (path,) = json.loads((runs / "dp" / "summary.json").read_text())["allreduce_critical_path"]
    assert path["stage"] == 0 and path["steps"] == 8  # 80 rows in minibatches of 11
    assert path["exposed_s"] >= 0 and path["own_s"] > 0 and path["wait_s"] >= 0
    assert path["polled_s"] >= 0
    assert (
        json.loads((runs / "one" / "summary.json").read_text())["allreduce_critical_path"] is None
    )
