"""Contract of graphpart.run.config.

load_config merges defaults, a TOML file and dotted overrides (typed, or command-line strings
coerced to the field's type) into frozen dataclasses; every invalid input raises a one-line
ConfigError naming the key and value and what would be valid; dump_toml writes a file that loads
back to an equal Config; the bundled examples load.
"""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from graphpart.errors import ConfigError
from graphpart.ir.ops import ACTIVATIONS
from graphpart.run.config import Config, dump_toml, load_config

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _error(path=None, overrides=None) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(path, overrides or {})
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _toml(tmp_path, text: str, name: str = "c.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- defaults, file, overrides ------------------------------------------------------------


def test_defaults_match_the_documented_values():
    c = load_config(None)
    assert c == Config()
    assert c.model.hidden == (64, 64, 64) and c.model.activation == "relu" and c.model.bias is True
    assert c.model.loss == "cross_entropy" and c.model.weight_decay == 1e-4
    assert c.data.source == "digits" and c.data.test_fraction == 0.2
    assert (c.train.epochs, c.train.batch_size, c.train.optimizer) == (30, 64, "adam")
    assert c.train.lr == 3e-3 and c.train.dtype == "float32" and c.train.log_every == 0
    assert c.train.tensorboard is False
    assert load_config(None, {"train.tensorboard": "true"}).train.tensorboard is True
    assert (c.pipeline.stages, c.pipeline.microbatches, c.pipeline.schedule) == (1, 1, "1f1b")
    assert c.pipeline.strategy == "balanced" and c.pipeline.address == ""
    assert c.pipeline.device == "cpu" and c.pipeline.recompute is False
    assert (c.run.dir, c.run.name) == ("runs", "")


def test_the_embedded_default_config_is_the_one_source_of_defaults():
    """A TOML without a key, the CLI without a flag and Config() all mean the same value: the
    embedded digits.toml's."""
    path = pathlib.Path(__file__).resolve().parent.parent / "graphpart" / "configs" / "digits.toml"
    embedded = load_config(str(path))
    assert embedded == Config()


def test_config_is_frozen():
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.train.epochs = 3  # type: ignore[misc]


def test_file_values_override_defaults_and_ints_become_floats(tmp_path):
    path = _toml(tmp_path, "[model]\nhidden = []\n[train]\nlr = 1\nepochs = 3\n")
    c = load_config(path)
    assert c.model.hidden == () and c.train.epochs == 3
    assert c.train.lr == 1.0 and isinstance(c.train.lr, float)
    assert c.train.batch_size == 64  # untouched default


def test_overrides_win_over_file(tmp_path):
    path = _toml(tmp_path, "[train]\nepochs = 3\n")
    assert load_config(path, {"train.epochs": 7}).train.epochs == 7


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("train.epochs", "3", 3),
        ("train.lr", "0.01", 0.01),
        ("train.lr", "1e-2", 0.01),
        ("model.bias", "false", False),
        ("pipeline.recompute", "True", True),
        ("pipeline.recompute", "0", False),
        ("model.hidden", "64,64", (64, 64)),
        ("model.hidden", "[128, 32]", (128, 32)),
        ("model.hidden", "", ()),
        ("data.source", "synthetic", "synthetic"),
        ("run.name", "123", "123"),  # strings stay strings
    ],
)
def test_string_overrides_are_coerced(key, text, expected):
    section, field = key.split(".")
    assert getattr(getattr(load_config(None, {key: text}), section), field) == expected


def test_typed_override_list_becomes_tuple():
    assert load_config(None, {"model.hidden": [32, 16]}).model.hidden == (32, 16)


def test_to_dict_is_plain_and_from_dict_inverts_it():
    c = load_config(None, {"model.hidden": "8,4", "train.seed": 5})
    d = c.to_dict()
    assert d["model"]["hidden"] == [8, 4] and d["train"]["seed"] == 5
    assert set(d) == {"model", "data", "train", "pipeline", "run"}
    assert Config.from_dict(d) == c


# --- dump / round trip --------------------------------------------------------------------


def test_round_trip_defaults(tmp_path):
    c = Config()
    assert load_config(_toml(tmp_path, dump_toml(c))) == c


def test_round_trip_unusual_values(tmp_path):
    c = load_config(
        None,
        {
            "model.hidden": [],
            "model.weight_decay": 1.5e-7,
            "train.eps": 1e-12,
            "train.lr": 0.1,
            "data.source": 'dir with "quotes"\\and backslash/é.npz',
            "run.name": "tab\there",
            "pipeline.address": "ray://10.0.0.1:10001",
            "pipeline.recompute": True,
        },
    )
    text = dump_toml(c)
    assert text.startswith("#") and "[pipeline]" in text
    assert load_config(_toml(tmp_path, text)) == c


def test_examples_load_and_round_trip(tmp_path):
    digits = load_config(str(EXAMPLES / "digits.toml"))
    assert digits.data.source == "digits" and digits.model.hidden == (64, 64, 64)
    assert digits.model.weight_decay == 1e-4
    synthetic = load_config(str(EXAMPLES / "synthetic.toml"))
    assert synthetic.data.source == "synthetic" and synthetic.model.hidden == (256, 256)
    for c in (digits, synthetic):
        assert load_config(_toml(tmp_path, dump_toml(c))) == c


# --- errors -------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    msg = _error(str(tmp_path / "nope.toml"))
    assert "nope.toml" in msg and "not found" in msg


def test_toml_syntax_error_names_file_and_line(tmp_path):
    msg = _error(_toml(tmp_path, "[train]\nepochs = 3\nlr = = 2\n", "broken.toml"))
    assert "broken.toml" in msg and "TOML syntax error" in msg and "line 3" in msg


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00")
    assert "bin.toml" in _error(str(path))


def test_unknown_section_in_file_suggests(tmp_path):
    msg = _error(_toml(tmp_path, "[trian]\nepochs = 3\n"))
    assert "'trian'" in msg and "model, data, train, pipeline, run" in msg
    assert "did you mean 'train'" in msg and "c.toml" in msg


def test_top_level_key_suggests_its_section(tmp_path):
    msg = _error(_toml(tmp_path, "epochs = 3\n"))
    assert "'epochs' must be inside a section" in msg and "did you mean 'train.epochs'" in msg


def test_section_that_is_not_a_table(tmp_path):
    msg = _error(_toml(tmp_path, "model = 3\n"))
    assert "'model'" in msg and "table" in msg


def test_unknown_key_in_file_lists_valid_and_suggests(tmp_path):
    msg = _error(_toml(tmp_path, "[train]\nepoch = 3\n"))
    assert "'train.epoch'" in msg and "batch_size" in msg and "did you mean 'epochs'" in msg


def test_unknown_override_key_and_section():
    assert "did you mean 'lr'" in _error(overrides={"train.lrr": 1})
    msg = _error(overrides={"pipline.stages": 2})
    assert "'pipline'" in msg and "did you mean 'pipeline'" in msg


def test_override_without_section():
    msg = _error(overrides={"stages": "2"})
    assert "'stages'" in msg and "section.key" in msg and "'pipeline.stages'" in msg


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"train.epochs": "abc"}, "train.epochs='abc': expected an integer"),
        ({"train.epochs": "3.5"}, "train.epochs='3.5': expected an integer"),
        ({"train.epochs": 2.0}, "train.epochs=2.0: expected an integer"),
        ({"train.epochs": True}, "train.epochs=true: expected an integer"),
        ({"train.lr": "fast"}, "train.lr='fast': expected a number"),
        ({"train.lr": "inf"}, "train.lr=inf: must be a finite number"),
        ({"model.bias": "maybe"}, "model.bias='maybe': expected a boolean"),
        ({"model.bias": 1}, "model.bias=1: expected a boolean"),
        ({"model.hidden": 6.4}, "model.hidden=6.4: expected a list of integers"),
        ({"model.hidden": "64,x"}, "model.hidden='64,x': expected a list of integers"),
        ({"model.hidden": [64, 1.5]}, "model.hidden=[64, 1.5]: sizes must be positive"),
        ({"data.source": 3}, "data.source=3: expected a string"),
    ],
)
def test_wrong_type(overrides, needle):
    assert needle in _error(overrides=overrides)


def test_wrong_type_in_file(tmp_path):
    msg = _error(_toml(tmp_path, '[train]\nbatch_size = "big"\n'))
    assert "train.batch_size='big': expected an integer" in msg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.batch_size": 0}, "train.batch_size=0: must be a positive integer"),
        ({"model.hidden": [64, -3]}, "model.hidden=[64, -3]: sizes must be positive integers"),
        ({"train.lr": -1}, "train.lr=-1: must be > 0"),
        ({"train.eps": 0}, "train.eps=0: must be > 0"),
        ({"train.epochs": 0}, "train.epochs=0: must be a positive integer"),
        ({"train.momentum": 1.0}, "train.momentum=1.0: must be in [0, 1)"),
        ({"train.beta2": -0.1}, "train.beta2=-0.1: must be in [0, 1)"),
        ({"train.seed": -1}, "train.seed=-1: must be an integer >= 0"),
        ({"train.log_every": -5}, "train.log_every=-5: must be an integer >= 0"),
        ({"model.weight_decay": -1e-3}, "model.weight_decay=-0.001: must be >= 0"),
        ({"data.test_fraction": 1}, "data.test_fraction=1: must be in (0, 1), exclusive"),
        ({"data.n_samples": 1}, "data.n_samples=1: must be an integer >= 2"),
        ({"data.n_features": 0}, "data.n_features=0: must be a positive integer"),
        ({"pipeline.stages": 0}, "pipeline.stages=0: must be a positive integer"),
        ({"pipeline.microbatches": -2}, "pipeline.microbatches=-2: must be a positive integer"),
        ({"run.dir": " "}, "run.dir=' ': must be a non-empty path"),
        ({"run.name": "a/b"}, "run.name='a/b': must be a plain directory name"),
        ({"pipeline.data_parallel": 0}, "pipeline.data_parallel=0: must be a positive integer"),
        ({"pipeline.memory_budget": "64 parsecs"}, "pipeline.memory_budget='64 parsecs': must"),
        ({"pipeline.memory_budget": "-1MiB"}, 'such as "64MiB"'),
    ],
)
def test_out_of_range(overrides, message):
    assert message in _error(overrides=overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"model.activation": "softsign"},
            f"model.activation='softsign': must be one of {', '.join(ACTIVATIONS)}",
        ),
        ({"model.loss": "hinge"}, "model.loss='hinge': must be one of cross_entropy, mse"),
        ({"train.optimizer": "rmsprop"}, "train.optimizer='rmsprop': must be one of sgd, adam"),
        ({"train.dtype": "float16"}, "train.dtype='float16': must be one of float32, float64"),
        ({"pipeline.schedule": "zb"}, "pipeline.schedule='zb': must be one of gpipe, 1f1b"),
        (
            {"pipeline.strategy": "greedy"},
            "pipeline.strategy='greedy': must be one of uniform, balanced, memory",
        ),
        ({"pipeline.device": "tpu"}, "pipeline.device='tpu': must be one of cpu, cuda"),
        ({"data.source": "mnist"}, 'data.source=\'mnist\': must be "digits", "synthetic"'),
        ({"pipeline.address": "nowhere"}, "pipeline.address='nowhere': must be \"\""),
    ],
)
def test_bad_choice(overrides, message):
    assert message in _error(overrides=overrides)


@pytest.mark.parametrize("address", ["", "auto", "ray://head:10001", "10.0.0.2:6379"])
def test_valid_addresses(address):
    assert load_config(None, {"pipeline.address": address}).pipeline.address == address


def test_microbatches_cannot_exceed_batch_size():
    msg = _error(overrides={"pipeline.microbatches": 16, "train.batch_size": 8})
    assert "pipeline.microbatches=16" in msg and "train.batch_size=8" in msg


def test_synthetic_classification_needs_two_classes():
    msg = _error(overrides={"data.source": "synthetic", "data.n_classes": 1})
    assert "data.n_classes=1" in msg and "at least 2" in msg
    regression = {"data.source": "synthetic", "data.n_classes": 1, "model.loss": "mse"}
    assert load_config(None, regression).data.n_classes == 1


# -- the transport key (one key; older run directories' two keys are read) ----------------------


@pytest.mark.parametrize(
    "pipeline, want",
    [
        ({"runtime": "auto", "transport": "push"}, "inprocess"),  # one stage ran in process
        ({"runtime": "auto", "transport": "shm", "stages": 2}, "shm"),
        ({"runtime": "local", "transport": "push", "stages": 2}, "inprocess"),
        ({"runtime": "ray", "transport": "push"}, "push"),
        ({"runtime": "auto", "transport": "push", "address": "auto"}, "push"),
        ({"transport": "auto"}, "auto"),
    ],
)
def test_older_runtime_key_is_read_as_the_transport(tmp_path, pipeline, want):
    path = tmp_path / "old.toml"
    path.write_text("[pipeline]\n" + "".join(f"{k} = {v!r}\n" for k, v in pipeline.items()))
    text = path.read_text().replace("'", '"')
    path.write_text(text)
    cfg = load_config(str(path))
    assert cfg.pipeline.transport == want
    assert "runtime" not in cfg.to_dict()["pipeline"]


@pytest.mark.parametrize("name", ["tasks", "compiled"])
def test_removed_transports_are_refused_saying_so(tmp_path, name):
    """`tasks` and `compiled` were removed (docs/architecture.md): a config, an override or an
    older file naming one gets one line naming the value, the valid ones and why it went."""
    from graphpart.engines.transports import REMOVED

    for overrides in (
        {"pipeline.transport": name},
        {"pipeline.transport": name, "pipeline.stages": 2},
    ):
        msg = _error(overrides=overrides)
        assert f"pipeline.transport={name!r}" in msg and "auto, inprocess, push, shm" in msg
        assert f"{name} was removed ({REMOVED[name]})" in msg
    old = tmp_path / "old.toml"
    old.write_text(f'[pipeline]\nruntime = "ray"\ntransport = "{name}"\n')
    with pytest.raises(ConfigError, match=f"{name} was removed"):
        load_config(str(old))


def test_inprocess_transport_with_an_address_is_refused():
    with pytest.raises(ConfigError, match="needs a Ray transport"):
        Config.from_dict({"pipeline": {"transport": "inprocess", "address": "auto"}})


def test_transport_choices_come_from_the_registry():
    from graphpart.engines.transports import TRANSPORTS

    for name in TRANSPORTS:
        assert Config.from_dict({"pipeline": {"transport": name}}).pipeline.transport == name
    with pytest.raises(ConfigError, match="carrier-pigeon"):
        Config.from_dict({"pipeline": {"transport": "carrier-pigeon"}})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pipeline.transport": "inprocess"}, "replicas run on Ray actors; use one of auto, shm"),
        ({"train.batch_size": 1}, "each replica needs at least one row"),
    ],
)
def test_data_parallel_conflicts_are_named(overrides, message):
    msg = _error(overrides={"pipeline.data_parallel": 2, **overrides})
    assert "pipeline.data_parallel=2" in msg and message in msg


def test_data_parallel_takes_micro_batches_per_replica_up_to_its_share():
    """pipeline.microbatches with pipeline.data_parallel is per replica (accumulation inside
    each replica): accepted up to the smallest replica's share of a minibatch, floor(B / R)
    rows; beyond, a one-line error names the three values and the valid range; M < 1 is
    refused as anywhere."""
    ok = {"pipeline.data_parallel": 3, "train.batch_size": 14}
    cfg = load_config(None, {**ok, "pipeline.microbatches": 4})
    assert (cfg.pipeline.data_parallel, cfg.pipeline.microbatches) == (3, 4)
    msg = _error(overrides={**ok, "pipeline.microbatches": 5})
    assert "pipeline.microbatches=5 with pipeline.data_parallel=3 and train.batch_size=14" in msg
    assert "can be 4 row(s); use microbatches 1..4" in msg
    msg = _error(overrides={**ok, "pipeline.microbatches": 0})
    assert "pipeline.microbatches=0: must be a positive integer" in msg


@pytest.mark.parametrize("budget", ["", "64MiB", "1.5 GiB", "100MB", "123456"])
def test_memory_budgets_that_parse(budget):
    assert load_config(None, {"pipeline.memory_budget": budget}).pipeline.memory_budget == budget


def test_allreduce_overlap_is_on_by_default_and_takes_a_bool():
    """pipeline.allreduce_overlap: true unless set; --allreduce-overlap false turns it off; a
    non-boolean is a one-line error naming it."""
    from graphpart.run.session import make_config

    assert make_config(None).pipeline.allreduce_overlap is True
    off = make_config(None, {"pipeline.allreduce_overlap": "false", "pipeline.data_parallel": 2})
    assert off.pipeline.allreduce_overlap is False
    with pytest.raises(ConfigError, match="allreduce_overlap"):
        make_config(None, {"pipeline.allreduce_overlap": "sometimes"})


def test_chunks_are_checked_against_the_schedule_and_the_transport():
    """pipeline.chunks: 0 (the schedule's own) or a count the schedule takes; a schedule of
    virtual stages needs a transport that runs them, one stage a replica and no memory split."""
    assert load_config(None, {"pipeline.schedule": "interleaved", "pipeline.chunks": "3"})
    assert "pipeline.chunks=-1: must be 1 or more" in _error(overrides={"pipeline.chunks": "-1"})
    msg = _error(overrides={"pipeline.schedule": "zbv", "pipeline.chunks": "3"})
    assert msg.startswith("pipeline.chunks=3 with schedule 'zbv'") and "chunks=2" in msg
    assert "runs one stage a device" in _error(overrides={"pipeline.chunks": "2"})
    for transport in ("inprocess", "push", "shm"):  # every transport runs virtual stages
        zbv = {"pipeline.schedule": "zbv", "pipeline.transport": transport}
        assert load_config(None, zbv).pipeline.transport == transport
    msg = _error(overrides={"pipeline.schedule": "zbv", "pipeline.strategy": "memory"})
    assert "pipeline.strategy='memory'" in msg
    dp = {"pipeline.schedule": "zbv", "pipeline.data_parallel": "2", "pipeline.stages": "2"}
    msg = _error(overrides=dp)
    assert "pipeline.data_parallel=2" in msg
