"""graphpart.tools.compare.at_once: one measurement in n fresh processes at once, in step.

Contract: `at_once(n, "module:function", args)` runs function(*args, sync=...) in n new
Python processes and returns their results by rank; `sync` knows its process's rank of the
world; a call of it returns in every process only when all n have called it as often (so the
k-th phase starts in all of them after every one has ended phase k - 1); a process that
raises fails the whole with a RuntimeError naming its error, and so does one that dies; the
others then end through their `finally` blocks; a phase longer than the timeout is a
TimeoutError; what a process prints never reaches the protocol; n < 1 is refused. Its
processes do not import the caller's main script (a spawned multiprocessing child would).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from graphpart.tools.compare.at_once import at_once

pytestmark = pytest.mark.ray  # starts other processes

HERE = str(Path(__file__).parent)


def phases(k: int, *, sync) -> tuple[int, int, int, list[tuple[float, float]]]:
    """`k` phases: each process's clock before and after each sync; its pid, rank, world."""
    marks = []
    for i in range(k):
        time.sleep(0.01 * sync.rank + 0.002 * i)  # processes reach the sync apart
        before = time.time()
        sync()
        marks.append((before, time.time()))
    return os.getpid(), sync.rank, sync.world, marks


def fails(*, sync) -> None:
    sync()
    raise ValueError("bad rows=3; want >= 4")


def dies(*, sync) -> None:
    os._exit(3)


def chatty(*, sync) -> str:
    """Prints to stdout and writes to file descriptor 1: neither reaches the protocol."""
    print("a library's banner")
    os.write(1, b"x" * 100_000 + b"\n")
    sync()
    return "done"


def tidy(folder: str, *, sync) -> None:
    """Rank 1 fails after the first sync; every rank's `finally` leaves a file."""
    try:
        sync()
        if sync.rank == 1:
            raise ValueError("rank 1 failed")
        sync()
    finally:
        Path(folder, f"done-{sync.rank}").touch()


def slow(*, sync) -> None:
    sync()
    time.sleep(30 if sync.rank == 1 else 0)
    sync()


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(HERE)  # the children take the parent's sys.path


def test_processes_run_each_phase_in_step():
    got = at_once(3, "test_at_once:phases", (4,))
    pids = {pid for pid, *_ in got}
    assert len(pids) == 3 and os.getpid() not in pids
    assert [(rank, world) for _, rank, world, _ in got] == [(0, 3), (1, 3), (2, 3)]
    for k in range(4):
        assert max(m[k][0] for *_, m in got) <= min(m[k][1] for *_, m in got)


def test_a_failing_process_fails_the_whole_with_its_error():
    with pytest.raises(RuntimeError, match=r"ValueError: bad rows=3; want >= 4"):
        at_once(2, "test_at_once:fails", ())
    with pytest.raises(RuntimeError, match="exited with 3"):
        at_once(2, "test_at_once:dies", ())


def test_prints_do_not_reach_the_protocol():
    assert at_once(2, "test_at_once:chatty", ()) == ["done", "done"]


def test_a_peers_failure_lets_every_process_clean_up(tmp_path):
    """The others, waiting at the barrier, exit through their `finally` blocks (so a
    measurement's shared-memory files are removed)."""
    with pytest.raises(RuntimeError, match="rank 1 failed"):
        at_once(3, "test_at_once:tidy", (str(tmp_path),))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done-0", "done-1", "done-2"]


def test_a_phase_past_the_timeout_fails_and_ends_the_processes():
    t = time.monotonic()
    with pytest.raises(TimeoutError, match="a phase did not end in time"):
        at_once(2, "test_at_once:slow", (), timeout_s=1.0)
    assert time.monotonic() - t < 15  # the sleeping process was ended, not waited for


def test_n_must_be_positive():
    with pytest.raises(ValueError, match="n=0"):
        at_once(0, "test_at_once:phases", (1,))
