"""train.tensorboard: RUN_DIR/tensorboard/ holds TensorBoard event files that mirror metrics.jsonl.

Contract: with train.tensorboard = true, a run writes one event file whose scalars are exactly
metrics.jsonl's (loss/step from step rows, loss/train, loss/test and accuracy/test from epoch
rows), each at its row's step and time; a resumed run, or one whose stages were restarted, shows
no step twice (its event file is written afresh from the metrics cut back to the checkpoint), and
a run that turns tensorboard on when it resumes shows its whole history; without tensorboardX the
run is refused, before anything is written, by a one-line ConfigError naming the pip command.
The event files are read back by parsing their TFRecord framing with tensorboardX's own Event
protobuf. (tensorboardX imports torch where torch is installed: seconds, so the slow lane.)
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from graphpart.errors import ConfigError, StageFailure
from graphpart.run.config import load_config
from graphpart.run.metrics import kind_of
from graphpart.run.tensorboard import TAGS
from graphpart.run.train import train
from graphpart.run.trainer import Trainer


def _cfg(tmp_path: Path, **over):
    base = {
        "train.epochs": 2,
        "train.log_every": 5,
        "train.tensorboard": True,
        "model.hidden": [16],
        "run.dir": str(tmp_path),
        "train.dtype": "float64",
    }
    base.update(over)
    return load_config(None, base)


def _quiet(cfg, **kw):
    return train(cfg, progress=False, log=lambda m: None, **kw)


def _records(path: Path) -> list[bytes]:
    """The records of a TFRecord file: length (u64), its crc (u32), data, the data's crc."""
    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        (n,) = struct.unpack_from("<Q", data, at)
        out.append(data[at + 12 : at + 12 + n])
        at += 12 + n + 4
    return out


def _event_scalars(run: Path) -> dict[str, list[tuple[int, float, float]]]:
    """{tag: [(step, value, wall time), ...]} of the run's one event file."""
    from tensorboardX.proto.event_pb2 import Event

    files = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    out: dict[str, list[tuple[int, float, float]]] = {}
    for rec in _records(files[0]):
        ev = Event.FromString(rec)
        for v in ev.summary.value:
            out.setdefault(v.tag, []).append((ev.step, v.simple_value, ev.wall_time))
    return out


def _jsonl_scalars(run: Path) -> dict[str, list[tuple[int, float, float]]]:
    """The same, from metrics.jsonl."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for (kind, key), tag in TAGS.items():
            if kind_of(row) == kind and key in row:
                out.setdefault(tag, []).append((row["step"], row[key], row["time"]))
    return out


def _assert_mirrors(run: Path) -> dict[str, list[tuple[int, float, float]]]:
    got, want = _event_scalars(run), _jsonl_scalars(run)
    assert sorted(got) == sorted(want)
    for tag in want:
        assert [s for s, _, _ in got[tag]] == [s for s, _, _ in want[tag]], tag
        for (_, a, ta), (_, b, tb) in zip(got[tag], want[tag], strict=True):
            assert a == pytest.approx(b, rel=1e-6)  # TensorBoard keeps float32
            assert ta == pytest.approx(tb, abs=1e-3)
    return got


@pytest.mark.ray
def test_event_file_scalars_equal_metrics_jsonl(tmp_path):
    out = _quiet(_cfg(tmp_path))
    run = Path(out["run_dir"])
    got = _assert_mirrors(run)
    assert set(got) == {"loss/step", "loss/train", "loss/test", "accuracy/test"}
    assert [s for s, _, _ in got["loss/train"]] == [out["steps"] // 2, out["steps"]]
    assert len(got["loss/step"]) == out["steps"] // 5


@pytest.mark.ray
def test_resume_writes_no_step_twice(tmp_path):
    first = _quiet(_cfg(tmp_path))
    run = Path(first["run_dir"])
    with open(run / "metrics.jsonl", "a") as f:  # a crash after an append, before a checkpoint
        f.write(json.dumps({"kind": "step", "step": first["steps"] + 3, "epoch": 3, "loss": 9.0}))
        f.write("\n")
    _quiet(_cfg(tmp_path, **{"train.epochs": 3}), resume=run)
    got = _assert_mirrors(run)
    for tag, points in got.items():
        steps = [s for s, _, _ in points]
        assert steps == sorted(set(steps)), tag
    assert 9.0 not in [v for _, v, _ in got["loss/step"]]
    assert len(got["loss/train"]) == 3


@pytest.mark.ray
def test_turning_tensorboard_on_at_resume_shows_the_whole_history(tmp_path):
    first = _quiet(_cfg(tmp_path, **{"train.tensorboard": False}))
    run = Path(first["run_dir"])
    assert not (run / "tensorboard").exists()
    _quiet(_cfg(tmp_path, **{"train.epochs": 3}), resume=run)
    got = _assert_mirrors(run)
    assert [e for e, _, _ in got["loss/train"]][:2] == [first["steps"] // 2, first["steps"]]


@pytest.mark.ray
def test_restarted_stages_rewrite_the_event_file_from_the_checkpoint(tmp_path, monkeypatch):
    real, calls = Trainer._epochs, []

    def failing_once(self, engine):
        real(self, engine)
        st = self.st
        calls.append(st.step)
        if len(calls) == 1:  # a row past the checkpoint, then a dead stage
            row = {"kind": "step", "step": st.step + 2, "epoch": st.epoch + 1, "loss": 7.0}
            self.run.append_metrics(row)
            self.events.write(row)
            raise StageFailure("stage 0 died (injected)")

    monkeypatch.setattr(Trainer, "_epochs", failing_once)
    out = _quiet(_cfg(tmp_path, **{"train.max_failures": 1}))
    assert out["failures_recovered"] == 1 and len(calls) == 2
    got = _assert_mirrors(Path(out["run_dir"]))
    assert 7.0 not in [v for _, v, _ in got["loss/step"]]


def test_without_tensorboardx_the_run_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` fails
    with pytest.raises(ConfigError) as e:
        _quiet(_cfg(tmp_path / "runs"))
    msg = str(e.value)
    assert "\n" not in msg and "train.tensorboard" in msg
    assert "pip install 'graphpart[tensorboard]'" in msg
    assert not (tmp_path / "runs").exists()
