"""Stage state to and from the driver through files on this machine, not Ray's object store.

A stage's state (parameters and optimizer arrays: the bulk of its memory) returned through a
Ray call is serialised into Ray's object store, whose pages are mapped into the stage's process:
each checkpoint grew every stage's resident memory by its whole state, and a resume by what it
was sent. A stage on the driver's machine instead writes its state to a file the driver reads
(workers/state_file.py: no copy in the stage); a stage on another machine, or one in this
process, is called as before.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphpart.engines.transport import Calls
from workers import state_file


def gather(
    transport: Calls, workers: Sequence[int], host: str | None = None, live: bool = False
) -> list[dict[str, Any]]:
    """The state of each of `workers` (stage or replica indices), in that order. `host`: the
    machine whose files the driver reads (this one; the tests name another to take the
    fallback). `live`: workers in this process give their own arrays, not copies (valid until
    their next step: for a caller that writes them out at once, as a checkpoint does)."""
    if live and transport.in_process:
        return transport.get([transport.call(k, "get_state", False) for k in workers])
    return _gather(transport, workers, host, params_only=False)


def gather_params(
    transport: Calls, workers: Sequence[int], host: str | None = None
) -> dict[str, np.ndarray]:
    """The parameters of `workers`, by name (the same way as `gather`)."""
    out: dict[str, np.ndarray] = {}
    for st in _gather(transport, workers, host, params_only=True):
        out.update(st["params"])
    return out


def _gather(
    transport: Calls, workers: Sequence[int], host: str | None, params_only: bool
) -> list[dict[str, Any]]:
    slow = "get_params" if params_only else "get_state"  # what a worker elsewhere answers
    if transport.in_process:
        return _wrap(transport.get([transport.call(k, slow) for k in workers]), params_only)
    host = os.uname().nodename if host is None else host
    with tempfile.TemporaryDirectory(prefix="graphpart-state-") as d:
        paths = [str(Path(d) / f"worker{k}.state") for k in workers]
        wrote = transport.get(
            [
                transport.call(k, "write_state", p, host, params_only)
                for k, p in zip(workers, paths, strict=True)
            ]
        )
        far = [k for k, ok in zip(workers, wrote, strict=True) if not ok]
        answers = _wrap(transport.get([transport.call(k, slow) for k in far]), params_only)
        got = dict(zip(far, answers, strict=True))
        return [
            state_file.read(p) if ok else got[k]
            for k, p, ok in zip(workers, paths, wrote, strict=True)
        ]


def _wrap(answers: list[Any], params_only: bool) -> list[dict[str, Any]]:
    """get_params' answers in get_state's shape."""
    return [{"params": a, "opt": {}, "steps": 0} for a in answers] if params_only else answers


def scatter(
    transport: Calls, states: Mapping[int, Mapping[str, Any]], host: str | None = None
) -> None:
    """Load states[k] into worker k, for every k given (`host` as for `gather`)."""
    if transport.in_process:
        transport.get([transport.call(k, "set_state", s) for k, s in states.items()])
        return
    host = os.uname().nodename if host is None else host
    with tempfile.TemporaryDirectory(prefix="graphpart-state-") as d:
        paths: dict[int, str] = {}
        written: dict[int, str] = {}  # one file for workers given the same state (replicas)
        for k, s in states.items():
            if id(s) not in written:
                written[id(s)] = str(Path(d) / f"worker{k}.state")
                state_file.write(written[id(s)], s)
            paths[k] = written[id(s)]
        done = transport.get([transport.call(k, "read_state", paths[k], host) for k in states])
        far = [k for k, ok in zip(states, done, strict=True) if not ok]
        transport.get([transport.call(k, "set_state", states[k]) for k in far])
