"""A stage's state (parameters, optimizer arrays, step count) as one file, written without a copy.

Why a file: a stage's state returned through Ray is serialised into Ray's object store, whose
pages are mapped into the stage's process, so every checkpoint grew the stage's resident memory
by its whole state (the store places each new object on pages not touched before). Written
here, the arrays go from the stage's own buffers to the page cache (`ndarray.tofile`: no
temporary), and the process grows by nothing. The driver reads the file on the same machine.

Layout: NumPy's .npy records back to back; the first is a JSON header (uint8) naming the
arrays that follow, in order: {"steps": n, "params": [name, ...], "opt": {name: slots}}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def write(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write `state` ({"params": {name: array}, "opt": {name: [array, ...]}, "steps": n}) to
    `path`, whole or not at all (a temporary name, then a rename)."""
    path = Path(path)
    params: Mapping[str, np.ndarray] = state["params"]
    opt: Mapping[str, Sequence[np.ndarray]] = state.get("opt", {})
    head = {
        "steps": int(state.get("steps", 0)),
        "params": list(params),
        "opt": {k: len(v) for k, v in opt.items()},
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            _put(f, np.frombuffer(json.dumps(head).encode(), dtype=np.uint8))
            for w in params.values():
                _put(f, w)
            for bufs in opt.values():
                for b in bufs:
                    _put(f, b)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read(path: str | Path) -> dict[str, Any]:
    """The state `write` wrote to `path`."""
    with open(path, "rb") as f:
        head = json.loads(_take(f).tobytes().decode())
        params = {name: _take(f) for name in head["params"]}
        opt = {name: [_take(f) for _ in range(n)] for name, n in head["opt"].items()}
    return {"params": params, "opt": opt, "steps": int(head["steps"])}


def _put(f: BinaryIO, a: np.ndarray) -> None:
    # a real file and a contiguous array: NumPy writes the buffer itself (tofile), no copy
    np.lib.format.write_array(f, np.asarray(a), allow_pickle=False)


def _take(f: BinaryIO) -> np.ndarray:
    return np.lib.format.read_array(f, allow_pickle=False)
