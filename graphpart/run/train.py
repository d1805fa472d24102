"""Training a config: set up, open (or resume) the run directory, train, say how it ended."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphpart.errors import StageFailure, Terminated
from graphpart.run import sigterm
from graphpart.run.checkpoint import RunDir
from graphpart.run.config import Config, dump_toml
from graphpart.run.metrics import resume_row
from graphpart.run.report import plan_dict
from graphpart.run.resume import open_resumed, plain, resume_advice
from graphpart.run.setup import check_budget, check_last_batch, setup
from graphpart.run.tensorboard import require as require_tensorboard
from graphpart.run.trainer import Trainer

__all__ = ["setup", "train"]


def train(
    cfg: Config,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    resume: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train as `cfg` says; write the run directory; return the summary.

    With `resume`, continue that run directory from its last checkpoint under `cfg` (which may
    change the epochs, the learning rate, the partition and the schedule: checkpoints are by
    parameter name), recording the new config; a run stopped before its first checkpoint starts
    again from the beginning. `on_epoch` gets each epoch's metrics (the metrics.jsonl row plus
    `train_s`, the training seconds so far) as soon as the epoch ends. summary.json says the
    run's state at every transition (running, completed, failed, interrupted). One process
    writes a run directory at a time (an OS lock; a second is refused naming the first). With
    train.max_failures = N, a stage that dies or stalls is restarted from the last checkpoint
    up to N times, and the run goes on to the same parameters.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if cfg.train.tensorboard:
        require_tensorboard()  # before anything is written
    s = setup(cfg)
    cfg = s.config  # as setup settled it (a batch larger than the data clamped to it)
    _ = s.dataset  # loaded and checked before anything is written
    check_budget(s)
    check_last_batch(s)
    for note in s.notes:
        log(note)
    ck = None
    created = not resume
    if resume:
        run, ck, changed = open_resumed(resume, s)
        run.remove_temporaries()
        run.truncate_metrics(ck["steps"] if ck else 0)
        run.append_metrics(
            resume_row(ck["steps"] if ck else 0, ck["epoch"] if ck else 0, plain(changed))
        )
    else:
        run = RunDir.create(cfg.run.dir, cfg.run.name)
    try:
        try:
            run.write_text("config.toml", dump_toml(cfg))
            run.write_text("plan.json", json.dumps(plan_dict(s.plan, cfg), indent=2))
            run.write_status(
                "running", epochs=cfg.train.epochs, pid=os.getpid(), host=os.uname().nodename
            )
        except OSError:
            if created:  # a run directory that could not even be started leads nowhere
                run.discard()
            raise
        return Trainer(s, run, ck, log=log, progress=progress, on_epoch=on_epoch).fit()
    # every way a run ends is written to summary.json (as far as the disk lets)
    except KeyboardInterrupt as e:
        term = sigterm.terminated(e)
        msg = f"stopped {'by SIGTERM' if term else 'by Ctrl-C'}; " + resume_advice(run)
        _try_status(run, "interrupted", msg)
        raise (Terminated if term else KeyboardInterrupt)(msg) from None
    except StageFailure as e:
        msg = f"{e}; " + resume_advice(run)
        _try_status(run, "failed", msg)
        raise StageFailure(msg) from None
    except BaseException as e:
        if run.path.is_dir():  # not a directory discarded at start
            _try_status(
                run, "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
        raise
    finally:
        run.unlock()


def _try_status(run: RunDir, state: str, message: str) -> None:
    """Write summary.json's state; a disk that refuses it must not hide why the run ended."""
    try:
        run.write_status(state, message)
    except OSError:
        pass
