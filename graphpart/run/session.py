"""The Python API: train a model, load a run directory, evaluate it, predict with it.

A thin layer over the training loop (`graphpart.run.train`) and the run directory it writes;
`graphpart` exports `train`, `load` and `Run` at the top level, and the CLI's `evaluate` and
`predict` commands are built on them. Predictions use the reference forward pass
(`graphpart.autodiff.forward`) on the saved parameters: one process, no Ray, whatever
partition the run trained under.

>>> import graphpart as gp
>>> run = gp.train(overrides={"train.epochs": 1, "model.hidden": [16]})
>>> run.summary["state"], run.n_features, run.n_outputs
('completed', 64, 10)
>>> sorted(run.evaluate())  # on the run's own test split
['accuracy', 'loss', 'samples']
>>> from sklearn.datasets import load_digits
>>> X, y = load_digits(return_X_y=True)  # pixel values 0..16: the model sees X / 16
>>> run.predict(X[:5], classes=True).shape, run.predict(X[:5]).shape
((5,), (5, 10))
>>> gp.load(run.path).evaluate((X, y))["samples"]
1797
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from graphpart.autodiff import check_params, forward
from graphpart.engines import check_device
from graphpart.errors import ConfigError, DataError, GraphpartError, RunError
from graphpart.ir import Graph, mlp
from graphpart.run import data as gdata
from graphpart.run.arrays import save_arrays
from graphpart.run.config import Config, load_config
from graphpart.run.evaluate import scores
from graphpart.run.setup import load_dataset
from graphpart.run.train import train as train_config

DEFAULT_CONFIG = "digits.toml"  # the embedded config (graphpart/configs/, as in examples/)
_CHUNK_ROWS = 1 << 16  # rows the reference forward pass takes at once

ConfigLike = str | os.PathLike | Config | Mapping[str, Any] | None
Data = str | os.PathLike | tuple[Any, Any] | None


def make_config(config: ConfigLike = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """A validated Config: `config` is a path to a TOML file, a Config, a dict of sections
    ({"train": {"epochs": 3}}) or None (the embedded digits config, as `graphpart train` uses);
    then `overrides`, dotted keys as `--set` takes them ({"train.epochs": 3}). A bad key or
    value is a one-line ConfigError.

    >>> cfg = make_config(overrides={"train.epochs": 3, "model.hidden": [32]})
    >>> cfg.data.source, cfg.train.epochs, cfg.model.hidden
    ('digits', 3, (32,))
    >>> make_config(cfg, {"train.lr": 0.01}).train.lr
    0.01
    """
    overrides = dict(overrides or {})
    if config is None:
        with resources.as_file(resources.files("graphpart") / "configs" / DEFAULT_CONFIG) as p:
            return load_config(str(p), overrides)
    if isinstance(config, str | os.PathLike):
        return load_config(os.fspath(config), overrides)
    if isinstance(config, Mapping):
        config = Config.from_dict(config)
    if not isinstance(config, Config):
        raise ConfigError(
            f"config of type {type(config).__name__}: expected a path to a TOML file, a "
            "Config, a dict of sections or None (the embedded digits config); training data "
            "as arrays goes to data=(X, y)"
        )
    if not overrides:
        return config
    flat = {
        f"{sec}.{key}": v for sec, table in config.to_dict().items() for key, v in table.items()
    }
    return load_config(None, {**flat, **overrides})


def train(
    config: ConfigLike | tuple[Any, Any] = None,
    *,
    data: Data = None,
    overrides: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **settings: Any,
) -> Run:
    """Train as `graphpart train` does and return the finished run (see `load`).

    `config` and `overrides` as `make_config` takes them: a TOML path, a Config, a dict of
    sections or None (the embedded digits config), then dotted keys such as
    {"train.epochs": 3, "pipeline.stages": 2}. `settings` are any config key by its last name
    (epochs=3, stages=2, hidden=[32, 32], batch_size=128, lr=0.01, name="mine", ...), applied
    after `overrides`. `data` is "digits", "synthetic", a .npz/.csv path, or arrays (X, y)
    (also accepted in place of `config`): arrays are saved once, by content, under
    RUN_DIR/data/ and the run's config names that file, so `--resume` and `evaluate` find
    them. `on_epoch` gets each epoch's metrics as soon as it ends; `progress` shows a progress
    bar; `log` gets the epoch lines (default: stderr). Writes a run directory under run.dir
    (default "runs", relative to the working folder).

    >>> run = train(overrides={"train.epochs": 1, "model.hidden": [16]})
    >>> run.summary["epochs"], run.summary["steps"], sorted(run.params)
    (1, 23, ['W1', 'W2', 'b1', 'b2'])
    >>> X = np.random.default_rng(0).standard_normal((100, 4))
    >>> y = (X[:, 0] > 0).astype(int)
    >>> run = train((X, y), epochs=2, hidden=8, batch_size=20)
    >>> run.summary["steps"], run.n_features, run.n_outputs
    (8, 4, 2)
    """
    if isinstance(config, tuple | list):  # gp.train((X, y)): the data, not a config
        if data is not None:
            raise ConfigError("arrays given both as config and as data=; give them once")
        config, data = None, (config[0], config[1]) if len(config) == 2 else config
    over = {**dict(overrides or {}), **_settings(settings)}
    if data is not None:
        if isinstance(data, str | os.PathLike):
            over["data.source"] = os.fspath(data)
        else:
            run_root = make_config(config, over).run.dir
            over["data.source"] = save_arrays(data, run_root)
    cfg = make_config(config, over)
    if not cfg.pipeline.address:  # with an address the workers check their own device
        check_device(cfg.pipeline.device)
    summary = train_config(cfg, progress=progress, log=log, on_epoch=on_epoch)
    return load(summary["run_dir"])


def _settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword settings (epochs=3) as dotted config keys (train.epochs); an unknown name is a
    one-line ConfigError naming the close ones."""
    keys = {k: f"{sec}.{k}" for sec, table in Config.from_dict({}).to_dict().items() for k in table}
    out = {}
    for name, value in settings.items():
        if name not in keys:
            close = difflib.get_close_matches(name, keys, n=3)
            raise ConfigError(
                f"train({name}=...): not a setting"
                + (f"; did you mean {', '.join(close)}?" if close else "")
                + f" (settings: {', '.join(sorted(keys))})"
            )
        out[keys[name]] = value
    return out


def load(run_dir: str | os.PathLike) -> Run:
    """The run in `run_dir` (a folder `graphpart train` wrote): its config.toml, summary.json
    and params.npz. A missing folder, a folder that is not a run, and a run without
    params.npz (still running, failed or interrupted before its end) are one-line RunErrors.

    >>> run = load(train(overrides={"train.epochs": 1, "model.hidden": [16]}).path)
    >>> run.config.model.hidden, run.task, run.summary["state"]
    ((16,), 'classification', 'completed')
    """
    path = Path(run_dir)
    if not path.exists():
        raise RunError(f"run directory {path}: no such folder")
    if not path.is_dir():
        raise RunError(f"run directory {path}: not a folder")
    if not (path / "config.toml").is_file():
        raise RunError(
            f"run directory {path}: no config.toml there; give a run directory written by "
            "`graphpart train`"
        )
    config = load_config(str(path / "config.toml"))
    summary = _read_summary(path)
    if not (path / "params.npz").is_file():
        raise RunError(f"run directory {path}: no params.npz; {_why_no_params(path, summary)}")
    try:
        with np.load(path / "params.npz", allow_pickle=False) as z:
            params = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise RunError(f"{path / 'params.npz'}: not a readable parameter file ({e})") from None
    run = Run(path, config, summary, params)
    last = f"W{len(config.model.hidden) + 1}"  # the first and last weights give the sizes
    try:
        for name in ("W1", last):
            if np.ndim(params.get(name)) != 2:
                raise GraphpartError(
                    f"it has {', '.join(sorted(params)) or 'no arrays'}; the model needs W1 to "
                    f"{last}, each a 2-D array"
                )
        check_params(run.graph, params)
    except GraphpartError as e:
        raise RunError(f"{path / 'params.npz'} does not fit {path / 'config.toml'}: {e}") from None
    return run


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _why_no_params(path: Path, summary: Mapping[str, Any]) -> str:
    state = summary.get("state")
    message = str(summary.get("message") or "").strip()
    resume = f"`graphpart train --resume {path}`"
    if state == "running":
        where = f" (pid {summary['pid']} on {summary.get('host', '?')})" if "pid" in summary else ""
        return (
            f"the run is still running{where} and writes params.npz when it ends; wait for it, "
            f"or, if it was killed, continue it with {resume}"
        )
    if state in ("failed", "interrupted"):
        said = f": {message}" if message else ""
        if "--resume" in message:  # the run said what resuming does
            return f"the run {state}{said}"
        return f"the run {state}{said}; continue it from its last checkpoint with {resume}"
    if state:
        return f"summary.json says state {state!r}"
    return "no summary.json either; the run never started, or is not a graphpart run"


@dataclass(frozen=True, eq=False)
class Run:
    """A trained run: its folder, config, summary (summary.json) and parameters (params.npz,
    by name: W1, b1, ...). Build one with `load` or `train`."""

    path: Path
    config: Config
    summary: dict[str, Any]
    params: dict[str, np.ndarray]

    def __repr__(self) -> str:
        parts = [repr(str(self.path)), str(self.summary.get("state", "?"))]
        parts += [
            f"{k}={self.summary[k]:.4g}"
            for k in ("test_accuracy", "test_loss")
            if isinstance(self.summary.get(k), int | float)
        ]
        return f"Run({', '.join(parts)})"

    @property
    def task(self) -> str:
        """ "classification" (loss cross_entropy) or "regression" (loss mse)."""
        return "regression" if self.config.model.loss == "mse" else "classification"

    @property
    def n_features(self) -> int:
        """Inputs the model takes (columns of X)."""
        return int(self.params["W1"].shape[1])

    @property
    def n_outputs(self) -> int:
        """Outputs: the number of classes, or of regression targets."""
        return int(self.params[f"W{len(self.config.model.hidden) + 1}"].shape[0])

    @property
    def graph(self) -> Graph:
        """The model's computational graph (graphpart.ir)."""
        m = self.config.model
        return mlp(
            [self.n_features, *m.hidden, self.n_outputs],
            activation=m.activation,
            bias=m.bias,
            loss=m.loss,
            weight_decay=m.weight_decay,
        )

    def predict(self, X: Any, *, classes: bool = False, proba: bool = False) -> np.ndarray:
        """The model's outputs for the samples X (an array n x n_features, or a .npz/.csv
        path): logits (n x classes; regression: n x targets), with `classes` the class ids,
        with `proba` the class probabilities (the softmax of the logits; rows sum to 1).

        X is in the units of the data the run trained on: for digits, 0..16 pixel values (as
        scikit-learn's load_digits gives them; the model sees X / 16); other sources as they
        are. A .csv may hold n_features columns, or n_features + 1 with a label last (ignored).

        >>> run = train(overrides={"train.epochs": 1, "model.hidden": [16]})
        >>> X = np.zeros((2, 64))
        >>> run.predict(X).shape, run.predict(X, classes=True).dtype
        ((2, 10), dtype('int64'))
        """
        for flag, on in (("classes", classes), ("proba", proba)):
            if on and self.task != "classification":
                raise GraphpartError(
                    f"{flag}=True: run {self.path} is a regression (model.loss="
                    f"{self.config.model.loss!r}); its predictions are the outputs themselves"
                )
        if classes and proba:
            raise GraphpartError("classes=True and proba=True: ask for one of them")
        X, _ = self._samples(X, labels=False)
        o = self._outputs(X)
        if proba:
            e = np.exp(o - o.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return o.argmax(axis=1) if classes else o

    def evaluate(self, data: Data = None) -> dict[str, Any]:
        """Loss and accuracy of the model: on the run's own test split (data=None), on every
        sample of a .npz (arrays X and y) or .csv (label last) file, or on (X, y) arrays.

        Returns {"loss", "accuracy", "samples"} for classification (the mean cross-entropy,
        without the regulariser, as training reports test_loss), {"loss", "samples"} for
        regression (mean over samples of half the squared error). X is in the units of the
        training data, as `predict` takes it; labels are classes 0..C-1.

        >>> run = train(overrides={"train.epochs": 1, "model.hidden": [16]})
        >>> m = run.evaluate()
        >>> m["samples"], 0.0 <= m["accuracy"] <= 1.0
        (359, True)
        """
        if data is None:
            X, y = self._test_split()
        else:
            X, y = self._samples(data, labels=True)
        return {**scores(self._outputs(X), y, self.config.model.loss), "samples": int(len(X))}

    def _samples(self, data: Any, *, labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(X, y) checked against the model, X scaled as the training source was."""
        kw = dict(
            n_features=self.n_features,
            dtype=self.config.train.dtype,
            task=self.task,
            n_outputs=self.n_outputs,
        )
        if isinstance(data, str | os.PathLike):
            X, y = gdata.read_samples(os.fspath(data), labels=labels, **kw)
        elif labels:
            if not (isinstance(data, tuple | list) and len(data) == 2):
                raise DataError(
                    f"data of type {type(data).__name__}: expected a .npz or .csv path, or a "
                    "pair (X, y)"
                )
            X, y = gdata.check_samples("data", data[0], data[1], **kw)
        else:
            X, y = gdata.check_samples("X", data, **kw)
        return gdata.scale_features(self.config.data.source, X), y

    def _test_split(self) -> tuple[np.ndarray, np.ndarray]:
        """The test split the run was evaluated on while training (reloaded from data.source)."""
        d = self.config.data
        if d.source.lower().endswith((".npz", ".csv")) and not os.path.exists(d.source):
            raise DataError(
                f"{d.source}: no such file; run {self.path} trained on it (data.source in its "
                "config.toml, relative to the folder it trained in): evaluate from that "
                "folder, or give the data to evaluate on"
            )
        ds = load_dataset(self.config)
        if ds.n_features != self.n_features or ds.n_outputs != self.n_outputs:
            raise DataError(
                f"{d.source}: has {ds.n_features} feature(s) and {ds.n_outputs} output(s) now, "
                f"but run {self.path}'s model takes {self.n_features} and has "
                f"{self.n_outputs}; the data changed since the run trained"
            )
        return ds.X_test, ds.y_test

    def _outputs(self, X: np.ndarray) -> np.ndarray:
        """The output o (logits) of the reference forward pass, a chunk of rows at a time."""
        graph, dtype = self.graph, self.params["W1"].dtype
        out = []
        for start in range(0, len(X), _CHUNK_ROWS):
            x = X[start : start + _CHUNK_ROWS]
            if self.task == "classification":
                y = np.zeros(len(x), np.int64)  # labels the loss needs; o does not depend on them
            else:
                y = np.zeros((len(x), self.n_outputs), dtype)
            out.append(forward(graph, self.params, {"x": x, "y": y})["o"])
        return np.concatenate(out)
