"""What a stage worker reports: one step's loss, its busy time, memory and traffic (records)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finish:
    """The end of one step on one stage: its data loss (summed over its micro-batches, already
    scaled by 1/N) and its part of the regulariser s (0 where it holds no regularised weight)."""

    loss: float
    s: float


@dataclass
class Busy:
    """Seconds a stage spent inside its forward calls, backward calls, `finish` and (a
    data-parallel replica) its gradient all-reduce, waits for the other replicas included.
    `weight` is the part of `backward` spent in a split backward's W calls (the rest is I).

    `allreduce` is the all-reduce's own time: the sum of its buckets' spans, each from when
    it could start (its gradients final and the communication free) to its end; `exposed` is
    the part the step waited for after its last backward compute (from the end of that
    compute to the end of the last bucket). Without overlap the buckets run after the
    backward, so exposed equals allreduce (and a little bookkeeping); with it (the buckets
    advanced between the backward's kernel calls) exposed <= allreduce, and `polled` is the
    work the buckets took inside the backward's calls (copies, sums, the channels' reads),
    which `backward` and `compute_cpu` leave out. `reductions` counts
    the all-reduces (steps), so each figure over it is a step's. `total`, the time a step
    kept the stage busy, counts the exposed part only.

    `wait` is the wall time a step's actions spent blocked on a neighbour's tensor (the
    inbox's take: the pipeline's fill, drain and stalls), and `span` the wall time of the
    stage's whole step call, from its first action to its `finish`'s end, so that a step of
    `s` seconds splits, per stage, into the actions' work, `wait`, `s - span` (the stage had no
    step to run: before the driver's call reached it, after it returned) and the rest of
    `span` (each action's own cost: sends, dispatch). Both are kept by `run_step` (push, shm
    and the data-parallel ring), not by the in-process engine.

    `wait_cpu` is the CPU time the thread spent inside those waits: an inbox polls its
    channels for a while before it sleeps (workers/channels.ChannelInbox.spin_s), so a stage
    that waits often burns CPU that is idleness, not work.

    `compute_cpu` is the CPU time the OS charged the calling thread inside the forward and
    backward calls (CLOCK_THREAD_CPUTIME_ID): their wall time less any time the thread was
    not running (preempted by another process, or waiting on a page fault's I/O).
    """

    forward: float = 0.0
    backward: float = 0.0
    weight: float = 0.0
    finish: float = 0.0
    allreduce: float = 0.0
    exposed: float = 0.0
    polled: float = 0.0
    reductions: int = 0
    compute_cpu: float = 0.0
    wait: float = 0.0
    wait_cpu: float = 0.0
    span: float = 0.0

    @property
    def total(self) -> float:
        # weight is in backward; polled (inside the backward's calls) is not
        return self.forward + self.backward + self.finish + self.polled + self.exposed


@dataclass(frozen=True)
class ReduceMark:
    """One step's all-reduce on one replica (perf_counter seconds: system-wide on Linux, so
    the replicas of one machine compare): when its last backward compute ended, when its last
    bucket ended, the buckets' own time (`Busy.allreduce`'s part of that step), and their
    work inside the backward's calls (`Busy.polled`'s: it delayed the compute's end)."""

    compute_end: float
    end: float
    own: float
    polled: float = 0.0


@dataclass(frozen=True)
class LedgerSnapshot:
    """Bytes a worker holds by category: now, at the peak, and every entry by name."""

    current: Mapping[str, int]
    peak: Mapping[str, int]
    peak_total: int
    t0: float  # the ledger's clock origin (perf_counter: system-wide on Linux, aligns processes)
    entries: Mapping[str, tuple[str, int]] = field(default_factory=dict)  # name: (category, bytes)


@dataclass(frozen=True)
class Rss:
    """Resident memory of a worker's process: before the stage allocated, peak since, now, and
    where the peak comes from ("VmHWM": the kernel's mark, reset at the baseline, exact;
    "samples": one reading per step)."""

    baseline: int
    peak: int
    current: int
    hwm: int | None
    peak_from: str
    parts_baseline: Mapping[str, int] = field(default_factory=dict)  # workers.hwm.RSS_PARTS
    parts_now: Mapping[str, int] = field(default_factory=dict)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    @classmethod
    def of_process(cls, rss: Sequence[Rss]) -> Rss:
        """One process's figures from the workers it runs (a device's virtual stages; every
        stage in process), each of which took its own: the baseline (and its parts) of the
        first worker to take one, the process's peak and latest reading."""
        first = min(rss, key=lambda r: r.baseline)
        last = max(rss, key=lambda r: r.current)
        return cls(
            baseline=first.baseline,
            peak=max(r.peak for r in rss),
            current=last.current,
            hwm=last.hwm,
            peak_from=first.peak_from,
            parts_baseline=first.parts_baseline,
            parts_now=last.parts_now,
        )


@dataclass(frozen=True)
class DeviceMemory:
    """A CUDA device's memory as Numba reports it."""

    free: int
    total: int


@dataclass(frozen=True)
class Traced:
    """Allocations tracemalloc saw since the stage's baseline (workers/traced.py): NumPy's
    arrays alive now, the peak of everything traced (arrays and Python objects), and the bytes
    tracemalloc's own records take."""

    arrays: int
    peak: int
    overhead: int


@dataclass(frozen=True)
class StageStats:
    """Everything a stage reports after (or between) steps."""

    stage: int
    pid: int
    busy: Busy
    bytes_sent: int
    bytes_received: int
    slots: int  # activation slots allocated: the schedule's peak in-flight count
    memory: LedgerSnapshot
    rss: Rss
    device_memory: DeviceMemory | None = None
    traced: Traced | None = None  # when profiling (keep_events)
    reduce_marks: tuple[ReduceMark, ...] = ()  # data parallelism: the last steps' all-reduces
    node: str = ""  # the machine the worker runs on (its clocks compare with its node's only)


def by_process(stats: Sequence[StageStats]) -> dict[int, list[StageStats]]:
    """Workers' stats grouped by the process that runs them, in order of their first worker."""
    out: dict[int, list[StageStats]] = {}
    for st in stats:
        out.setdefault(st.pid, []).append(st)
    return out
