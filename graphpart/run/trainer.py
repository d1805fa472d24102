"""The Trainer: a set-up run's epochs of steps, its checkpoints, evaluation and recovery."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from graphpart.engines import StageStats, Trainable, describe_cluster
from graphpart.errors import Diverged, StageFailure
from graphpart.params import Init
from graphpart.run import divergence, sigterm
from graphpart.run.checkpoint import RunDir, load_checkpoint, save_checkpoint
from graphpart.run.data import batches
from graphpart.run.evaluate import evaluate
from graphpart.run.metrics import epoch_row, step_row
from graphpart.run.progress import Progress
from graphpart.run.report import run_summary, write_curves
from graphpart.run.resume import fixed_keys
from graphpart.run.setup import Setup, make_engine, transport_of, uses_ray
from graphpart.run.tensorboard import EventLog

Log = Callable[[str], None]
OnEpoch = Callable[[dict[str, Any]], None]


class Trainer:
    """Trains set-up `s` into run directory `run` from checkpoint `ck` (None: from the start):
    every epoch is evaluated, checked for divergence and checkpointed; a stage that dies or
    stalls is restarted from the last checkpoint up to train.max_failures times. `log` gets
    what the user is told, `on_epoch` each epoch's metrics; `progress` shows a bar."""

    def __init__(
        self,
        s: Setup,
        run: RunDir,
        ck: dict[str, Any] | None,
        *,
        log: Log,
        progress: bool = True,
        on_epoch: OnEpoch | None = None,
    ) -> None:
        self.s, self.run, self.ck = s, run, ck
        self.log, self.progress, self.on_epoch = log, progress, on_epoch
        self.st = Progress(epoch=ck["epoch"], step=ck["steps"]) if ck else Progress()
        if ck:  # the last epoch's figures, in case no epoch is left to train (a run stopped
            self.st.metrics = run.last_epoch_metrics(self.st.step)  # past its last checkpoint)
        self.events: EventLog | None = None
        self.failures = 0
        self.startup: float | None = None  # Ray, workers, kernel compile or cache load

    def fit(self) -> dict[str, Any]:
        """Train to the last epoch; write params.npz, curves.png and summary.json; return the
        summary."""
        wall0 = time.perf_counter()
        if self.s.config.train.tensorboard:
            self.events = EventLog(self.run.path, self.run.read_metrics())
        try:
            final, stats = self._attempts()
        finally:
            if self.events is not None:
                self.events.close()
        self.run.save_params(final)
        write_curves(self.run)
        summary = run_summary(
            self.s,
            self.run,
            self.st,
            wall=time.perf_counter() - wall0,
            startup=self.startup,
            failures=self.failures,
            stats=stats,
        )
        self.run.write_text("summary.json", json.dumps(summary, indent=2))
        return summary

    def _attempts(self) -> tuple[dict[str, Any], list[StageStats]]:
        """Train to the end, restarting failed stages from the last checkpoint as allowed."""
        cfg = self.s.config
        t, p = cfg.train, cfg.pipeline
        if uses_ray(cfg):  # Ray start-up takes seconds: say what is happening
            workers = p.stages * p.data_parallel
            what = {(False, True): "stage", (True, False): "replica"}.get(
                (p.data_parallel > 1, p.stages > 1), "replica x stage"
            )
            self.log(
                f"starting {workers} {what} worker(s) "
                + (f"on the Ray cluster at {p.address}" if p.address else "on a local Ray")
                + f" ({transport_of(cfg)} transport) ..."
            )
        while True:
            t_start = time.perf_counter()
            params = Init(t.seed, t.dtype)  # each worker makes its own stage's parameters ...
            try:
                with make_engine(self.s, params) as engine:
                    sigterm.restore()  # Ray's start replaced the program's SIGTERM handler
                    if self.startup is None:
                        self.startup = time.perf_counter() - t_start
                        if p.address:  # say which cluster `auto` (or an address) joined
                            joined = f"joined {describe_cluster()}"
                            self.log(f"{joined} (pipeline.address={p.address!r})")
                    if self.ck:  # ... which set_state then overwrites with the checkpoint's
                        engine.set_state(self.ck["stages"](self.s.plan))
                    self._epochs(engine)
                    stats = engine.stats()  # the run's figures, before the final readout
                    return engine.get_params(), stats
            except StageFailure as e:
                self._recover(e)

    def _recover(self, e: StageFailure) -> None:
        """Go back to the last checkpoint after a failed stage, or give up past max_failures."""
        t, run = self.s.config.train, self.run
        self.failures += 1
        if self.failures > t.max_failures:
            raise e
        path = run.checkpoint_path
        self.ck = load_checkpoint(path, self.s.graph) if path.exists() else None
        ck = self.ck
        self.st = self.st.restart(ck["epoch"] if ck else 0, ck["steps"] if ck else 0)
        run.truncate_metrics(self.st.step)
        if self.events is not None:
            self.events.reopen(run.read_metrics())
        self.log(
            f"{e}; restarting the stages from "
            + (f"the checkpoint of epoch {self.st.epoch}" if ck else "the start")
            + f" (failure {self.failures} of train.max_failures={t.max_failures})"
        )

    def _record(self, row: dict[str, Any]) -> None:
        self.run.append_metrics(row)
        if self.events is not None:
            self.events.write(row)

    def _epochs(self, engine: Trainable) -> None:
        """Train from epoch st.epoch to the last, checkpointing each (st is updated as it goes)."""
        t, st = self.s.config.train, self.st
        n = len(self.s.dataset.X_train)
        bar = _bar(self.progress, (t.epochs - st.epoch) * -(-n // t.batch_size))
        try:
            for epoch in range(st.epoch, t.epochs):
                metrics = self._epoch(engine, epoch, bar)
                msg = (
                    f"epoch {epoch + 1:3d}/{t.epochs}  loss {metrics['train_loss']:.4f}"
                    f"  test loss {metrics['test_loss']:.4f}"
                )
                if "test_accuracy" in metrics:
                    msg += f"  test acc {metrics['test_accuracy']:.4f}"
                (bar.write if bar is not None else self.log)(msg)
        finally:
            if bar is not None:
                bar.close()

    def _epoch(self, engine: Trainable, epoch: int, bar: Any) -> dict[str, Any]:
        """One epoch's steps, its evaluation, checks and checkpoint; its metrics row."""
        s, st = self.s, self.st
        cfg, ds = s.config, s.dataset
        t = cfg.train
        t0 = time.perf_counter()
        total, count = 0.0, 0
        for idx in batches(len(ds.X_train), t.batch_size, t.seed, epoch):
            t_step = time.perf_counter()
            r = engine.step(ds.X_train[idx], ds.y_train[idx])
            st.timed_step(len(idx), time.perf_counter() - t_step)
            if not math.isfinite(r.J):
                culprit = divergence.culprit(s.plan, engine, ds.X_train[idx], ds.y_train[idx])
                raise Diverged(divergence.non_finite(r, st.step + 1, epoch + 1, t.lr, culprit))
            if st.first_loss is None:
                st.first_loss = r.J
            divergence.check_step(r.J, st, t.divergence, t.lr, epoch + 1)
            st.step += 1
            st.samples += len(idx)
            total += r.J * len(idx)
            count += len(idx)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{r.J:.4f}", refresh=False)
            if t.log_every and st.step % t.log_every == 0:
                self._record(step_row(st.step, epoch + 1, r.J, r.L, r.s))
        st.train_time += time.perf_counter() - t0
        figures = {
            "train_loss": total / count,
            **evaluate(engine, ds.X_test, ds.y_test, cfg.model.loss),
            "epoch_s": time.perf_counter() - t0,
        }
        metrics = epoch_row(st.step, epoch + 1, figures)
        divergence.check_epoch(metrics, st, t.divergence, t.lr)
        divergence.check_collapse(metrics, st, ds.y_test, t.lr)
        state = engine.get_state(live=True)  # written out before the next step
        divergence.check_finite_state(state, st.step)
        self._record(metrics)
        save_checkpoint(
            self.run.checkpoint_path,
            state,
            s.plan,
            epoch=epoch + 1,
            steps=st.step,
            fixed=fixed_keys(cfg),
        )
        st.epoch, st.metrics = epoch + 1, metrics
        if self.on_epoch is not None:
            self.on_epoch({**metrics, "train_s": st.train_time})
        return metrics


def _bar(enabled: bool, total: int) -> Any:
    """A tqdm progress bar on stderr (None: no bar)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr, leave=False)
