"""Run directories and checkpoints, written atomically so nothing a user saved is ever corrupted.

Every file is written to a temporary name in the same folder, flushed to disk and renamed over
its target (os.replace is atomic), so a crash leaves the old file or the new one, never half of
one. A run directory is created exclusively: an existing one is never reused or overwritten
(only `--resume` reopens it, and then only appends). Checkpoints store parameters and optimizer
state by parameter name, not by stage, so a run can resume under a different partition.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from graphpart.errors import ConfigError
from graphpart.ir.graph import Graph
from graphpart.run import metrics

FORMAT = "graphpart-checkpoint-1"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all; an OS refusal (a full disk) names `path`."""
    with atomic_file(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file to write `path` through, whole or not at all: a temporary name in the same
    folder, flushed to disk and renamed over `path` when the block ends without an error
    (removed when it raises); an OS refusal (a full disk) names `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise _naming(e, path) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """`np.savez`'s format (uncompressed, readable by np.load), written to `path` atomically
    and straight from the arrays: no in-memory archive and no copy of a contiguous array (a
    checkpoint of the wide model made the process that wrote it three times its state)."""
    with atomic_file(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, True) as z:
        for name, a in arrays.items():
            a = np.asarray(a)
            if a.dtype.hasobject:
                raise ValueError(f"{path}: array {name!r} holds Python objects; not saved")
            if not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)  # a copy, of this array only
            with z.open(f"{name}.npy", "w", force_zip64=True) as out:
                head = np.lib.format.header_data_from_array_1_0(a)
                try:
                    np.lib.format.write_array_header_1_0(out, head)
                except ValueError:  # a header too long for format 1.0
                    np.lib.format.write_array_header_2_0(out, head)
                out.write(memoryview(a.reshape(-1)).cast("B"))


def _naming(e: OSError, path: Path) -> OSError:
    """The same OS error, its message naming the file it was writing."""
    return type(e)(e.errno, f"cannot write {path}: {e.strerror or e}")


class RunDir:
    """A run's folder: config.toml, plan.json, metrics.jsonl, checkpoint.npz, params.npz,
    summary.json, curves.png and (train.tensorboard) tensorboard/."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: int | None = None

    LOCK = ".lock"  # held (flock) by the one process writing the run; the OS frees it on death

    def lock(self) -> RunDir:
        """Take the run's writer lock, or refuse in one line naming the live writer's pid and
        host: a run directory has one writer at a time. Returns self."""
        path = self.path / self.LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"run directory {self.path}: cannot open {path} ({e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"run directory {self.path}: cannot lock {path} ({e})") from None
            raise ConfigError(
                f"run directory {self.path} is being written by {holder}; one run writes a "
                "directory at a time: wait for it to end (or stop it), then --resume"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._lock = fd
        return self

    def unlock(self) -> None:
        """Release the writer lock (also released by the OS when the process ends)."""
        if self._lock is not None:
            fd, self._lock = self._lock, None
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)

    @classmethod
    def create(cls, root: str | Path, name: str = "") -> RunDir:
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ConfigError(
                f"run.dir={str(root)!r} is a file, not a folder; give a folder for run "
                "directories (it is created if missing)"
            ) from None
        except OSError as e:
            raise ConfigError(
                f"run.dir={str(root)!r}: cannot create it ({e.strerror or e}); give a folder "
                "you can write to"
            ) from None
        if name:
            path = root / name
            try:
                path.mkdir()
            except FileExistsError:
                raise ConfigError(
                    f"run directory {path} already exists; choose another run.name, or continue "
                    f"it with --resume {path}"
                ) from None
            except OSError as e:
                raise ConfigError(
                    f"run directory {path}: cannot create it ({e.strerror or e}); give a "
                    "run.dir you can write to"
                ) from None
            return cls(path).lock()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i in range(1000):
            path = root / (stamp if i == 0 else f"{stamp}-{i + 1}")
            try:
                path.mkdir()
                return cls(path).lock()
            except FileExistsError:
                continue
            except OSError as e:
                raise ConfigError(
                    f"run directory {path}: cannot create it ({e.strerror or e}); give a "
                    "run.dir you can write to"
                ) from None
        raise ConfigError(f"cannot create a new run directory under {root}")  # pragma: no cover

    @classmethod
    def open_existing(cls, path: str | Path) -> RunDir:
        """A run directory to go on with, locked for this process: one `graphpart train`
        wrote (its config.toml), with or without a checkpoint yet (without one, the run
        starts again from the beginning under its config)."""
        path = Path(path)
        if not (path / "config.toml").is_file():
            raise ConfigError(
                f"--resume {path}: no config.toml there; give a run directory "
                "written by `graphpart train`"
            )
        return cls(path).lock()

    def discard(self) -> None:
        """Remove a run directory this process created and could not start (nothing of the
        user's is in it: only what this process wrote before the first checkpoint)."""
        self.unlock()
        for f in self.path.iterdir():
            if f.is_file() and f.name in (self.LOCK, "config.toml", "plan.json", "summary.json"):
                f.unlink(missing_ok=True)
            elif f.is_file() and ".tmp-" in f.name:
                f.unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError:
            pass  # something else is in it: leave it

    @property
    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.npz"

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.path / name, text.encode())

    def write_status(self, state: str, message: str = "", **extra: Any) -> None:
        """summary.json says where the run is: running, completed, failed (with the message)
        or interrupted; written atomically at every transition."""
        row = {"state": state, "message": message, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.write_text("summary.json", json.dumps({**row, **extra}, indent=2))

    def remove_temporaries(self) -> list[str]:
        """Delete the temporary files an interrupted atomic write left behind."""
        gone = []
        for f in self.path.glob(".*.tmp-*"):
            f.unlink(missing_ok=True)
            gone.append(f.name)
        return gone

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's rows, each with its kind ("step" or "epoch"; graphpart.run.metrics)."""
        return metrics.read_rows(self.metrics_path)

    def truncate_metrics(self, steps: int) -> None:
        """Keep only metrics.jsonl rows of steps <= `steps`, of either kind (a resumed run
        appends after the checkpoint's step; rows written after it, before a crash, would
        repeat). Rows are kept as they were written."""
        path = self.metrics_path
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            if isinstance(row, dict) and int(row.get("step", 0)) <= steps:
                keep.append(line)
        atomic_write(path, "".join(k + "\n" for k in keep).encode())

    def last_epoch_metrics(self, steps: int) -> dict[str, Any]:
        """The last epoch row of metrics.jsonl at or before `steps` ({} if none)."""
        rows = metrics.of_kind(self.read_metrics(), "epoch")
        return next((r for r in reversed(rows) if int(r.get("step", 0)) <= steps), {})

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(dict(row)) + "\n")
                f.flush()
        except OSError as e:
            raise _naming(e, self.metrics_path) from None

    def save_params(self, params: Mapping[str, np.ndarray]) -> None:
        write_npz(self.path / "params.npz", params)


def save_checkpoint(
    path: Path,
    stage_states: list[Mapping[str, Any]],
    plan: Any,
    *,
    epoch: int,
    steps: int,
    fixed: Mapping[str, Any] | None = None,
) -> None:
    """Parameters and optimizer state of every stage, by parameter name, plus progress.
    `fixed`: the config keys a resume may not change (model, data, seed, dtype, optimizer),
    kept with the numbers they made, so an edited config.toml is caught on resume."""
    arrays: dict[str, np.ndarray] = {}
    for st in stage_states:
        for name, w in st["params"].items():
            arrays[f"param/{name}"] = w
        for name, bufs in st["opt"].items():
            for i, b in enumerate(bufs):
                arrays[f"opt/{name}/{i}"] = b
    meta = {
        "format": FORMAT,
        "epoch": epoch,
        "steps": steps,
        "stage_steps": [int(st["steps"]) for st in stage_states],
        **({"fixed": dict(fixed)} if fixed is not None else {}),
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    write_npz(Path(path), arrays)


def load_checkpoint(path: Path, graph: Graph, state_slots: int | None = None) -> dict[str, Any]:
    """Read a checkpoint and check it against `graph` (and, given `state_slots`, that every
    parameter has that many optimizer arrays of its shape); `stages(plan)` regroups it per
    stage, `fixed` is what the run's fixed config keys were (None in older checkpoints)."""
    path = Path(path)
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ConfigError(f"{path}: not a readable graphpart checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
    for v in graph.params:
        if v.name not in params:
            raise ConfigError(
                f"{path}: has no parameter {v.name!r}; it was written for a different model"
            )
        if tuple(params[v.name].shape) != v.shape:
            raise ConfigError(
                f"{path}: parameter {v.name!r} has shape {params[v.name].shape}, "
                f"the model needs {v.shape}; it was written for a different model"
            )
    opt: dict[str, list[np.ndarray]] = {}
    for k in sorted(a for a in arrays if a.startswith("opt/")):
        _, name, i = k.split("/")
        opt.setdefault(name, []).append(arrays[k])
    if state_slots is not None:
        for v in graph.params:
            bufs = opt.get(v.name, [])
            if len(bufs) != state_slots:
                raise ConfigError(
                    f"{path}: parameter {v.name!r} has {len(bufs)} optimizer array(s), the "
                    f"optimizer needs {state_slots}; it was written by another optimizer "
                    "setting, or damaged"
                )
            bad = next((b for b in bufs if tuple(b.shape) != v.shape), None)
            if bad is not None:
                raise ConfigError(
                    f"{path}: an optimizer array of {v.name!r} has shape {bad.shape}, the "
                    f"parameter has {v.shape}; the checkpoint is damaged"
                )
    steps = int(meta["steps"])

    def stages(plan: Any) -> list[dict[str, Any]]:
        return [
            {
                "params": {p: params[p] for p in st.params},
                "opt": {p: opt.get(p, []) for p in st.params},
                "steps": steps,
            }
            for st in plan.stages
        ]

    out: dict[str, Any] = {"params": params, "epoch": int(meta["epoch"]), "steps": steps}
    out["fixed"] = meta.get("fixed")
    out["stages"] = stages  # type: Callable[[Any], list[dict[str, Any]]]
    return out
