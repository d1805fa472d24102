"""Resident memory of some processes: the kernel's high-water mark, or sampled in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from graphpart.engines import read_hwm, reset_hwm


class RssSampler:
    """Resident set size of some processes: peak and a time series, from this process.

    The peak is the kernel's high-water mark (Linux /proc/PID/status VmHWM, reset through
    /proc/PID/clear_refs when sampling starts), so short-lived temporaries count too; where
    that is not available it is the largest of the samples a background thread takes every
    `interval` seconds (which also make the time series).
    """

    def __init__(self, pids: Sequence[int], interval: float = 0.005) -> None:
        import psutil

        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.interval = interval
        self.peak = dict.fromkeys(self.procs, 0)
        self.hwm = dict.fromkeys(self.procs, False)  # peak from the kernel's high-water mark
        self.samples: dict[int, list[tuple[float, int]]] = {pid: [] for pid in self.procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[int, int]:
        now = time.perf_counter()
        out = {}
        for pid, p in self.procs.items():
            try:
                rss = p.memory_info().rss
            except Exception:  # noqa: BLE001 - the process went away
                continue
            out[pid] = rss
            self.peak[pid] = max(self.peak[pid], rss)
            self.samples[pid].append((now, rss))
        return out

    @property
    def stopped(self) -> bool:
        """True once sampling has ended (the context was left)."""
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        for pid in self.procs:
            self.hwm[pid] = reset_hwm(pid)
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()
        for pid in self.procs:
            if self.hwm[pid]:
                hwm = read_hwm(pid)
                if hwm is None:
                    self.hwm[pid] = False
                else:
                    self.peak[pid] = max(self.peak[pid], hwm)
