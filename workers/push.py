"""One stage's whole step, with boundary tensors pushed to and from its neighbours (no Ray).

The driver-mediated engine submits every forward and backward as its own call and routes each
boundary tensor through the driver's object references. Here a stage runs its schedule's
action list in one call and its neighbours push tensors into its `Inbox` directly, so the
driver makes K calls a step instead of 2MK + K and stays off the critical path. What carries
a tensor from one stage to the next (`send_forward`, `send_backward`) is the caller's: a Ray
actor call in workers/actor.py, a plain function in tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from workers.actions import StageAction
from workers.stats import Busy, Finish
from workers.walk import walk

# (step, "F" | "B", micro-batch): what a tensor carries (I's: "B"); with virtual stages the
# sending one's index follows ("F3": virtual stage 3's activation)
Key = tuple[int, str, int]
Send = Callable[[Key, np.ndarray], None]


class StageRunner(Protocol):
    """What `run_step` drives: a StageWorker, or anything with its step methods."""

    def forward(
        self, mb: int, x: np.ndarray, y: np.ndarray | None = None, scale: float = 1.0
    ) -> np.ndarray | None: ...

    def backward(
        self, mb: int, g: np.ndarray | None = None, scale: float = 1.0
    ) -> np.ndarray | None: ...

    def finish(self, update: bool = True) -> Finish: ...

    def backward_input(
        self, mb: int, g: np.ndarray | None = None, scale: float = 1.0
    ) -> np.ndarray | None: ...

    def backward_weight(self, mb: int, scale: float = 1.0) -> None: ...

    def infer(self, x: np.ndarray) -> np.ndarray: ...


class NeighbourFailed(RuntimeError):
    """A neighbouring stage failed this step; this stage stopped waiting for it."""


class ActionFailed(RuntimeError):
    """An action of this stage failed; `what` names it ("forward of micro-batch 3")."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what}: {type(cause).__name__}: {cause}")
        self.what, self.cause = what, cause


class Inbox:
    """Tensors delivered by neighbours, keyed by (step, kind, micro-batch); thread-safe."""

    def __init__(self) -> None:
        self._items: dict[Key, Any] = {}
        self._failed: dict[int, str] = {}  # step -> why
        self._cv = threading.Condition()

    def put(self, key: Key, value: Any) -> None:
        with self._cv:
            self._items[key] = value
            self._cv.notify_all()

    def has(self, key: Key) -> bool:
        """Whether `key`'s value has arrived (take would not wait)."""
        with self._cv:
            return key in self._items

    def fail(self, step: int, why: str) -> None:
        """Wake every wait of `step` with NeighbourFailed(why) (the first reason is kept)."""
        with self._cv:
            self._failed.setdefault(step, why)
            self._cv.notify_all()

    def take(self, key: Key, timeout_s: float) -> Any:
        """Wait for `key`'s value."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while key not in self._items:
                if key[0] in self._failed:
                    raise NeighbourFailed(self._failed[key[0]])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no {key[1]} tensor of micro-batch {key[2]} arrived in {timeout_s:.0f} s"
                    )
                self._cv.wait(left)
            return self._items.pop(key)

    def clear_before(self, step: int) -> None:
        """Forget whatever an earlier, aborted step left behind."""
        with self._cv:
            self._items = {k: v for k, v in self._items.items() if k[0] >= step}
            self._failed = {s: w for s, w in self._failed.items() if s >= step}

    def __len__(self) -> int:
        with self._cv:
            return len(self._items)


FROM_INBOX = "inbox"  # xs: the micro-batch inputs arrive in the inbox, keyed (step, "F", mb)


def run_step(
    worker: StageRunner | Sequence[StageRunner],
    step: int,
    actions: Sequence[StageAction],
    inbox: Inbox,
    *,
    xs: Sequence[np.ndarray] | str | None,
    ys: Sequence[np.ndarray] | None,
    scale: float,
    update: bool,
    send_forward: Send | None,
    send_backward: Send | None,
    timeout_s: float = 600.0,
    infer: bool = False,
    reduce: Callable[[], object] | None = None,
    arm: Callable[[], object] | None = None,
    routes: Mapping[str, Send] | None = None,
    busy: Busy | None = None,
) -> Finish | list[Finish] | list[np.ndarray]:
    """Run one stage's actions of one step, then its `finish`; returns finish's result. With
    `infer`, the forwards are inference forwards (no cache, no loss, no finish) and the result
    is the outputs this stage did not send on (the last stage's), by micro-batch. `reduce`
    runs between the actions and `finish` (data parallelism: the gradients' all-reduce);
    `arm` right before the step's last weight-gradient action (its last B or W: after it every
    gradient of the step is final), so that the all-reduce can start inside it (overlap).

    Each action says where its input comes from (`receives`: this stage's inbox; else the
    micro-batch `xs[mb]`, or from the inbox too where `xs` is FROM_INBOX: the driver wrote the
    minibatch into a channel; or nothing for the last stage's backward) and whether its output is
    sent on (`sends`: through `send_forward` or `send_backward`, which must have copied or
    serialised the array when they return: the worker reuses its buffers). A forward with
    `labels` also takes `ys[mb]`.

    A device of virtual stages passes its chunks (a sequence of runners, chunk 0 first): each
    action runs on its `chunk`, a `near` input or output stays in this process (a copy, kept
    until the chunk that takes it runs), the others are sent through `routes[a.tag_out]` and
    taken from the inbox under `a.tag_in`; the result is each chunk's `finish`, in order.

    `busy` (a stage's, or its device's first chunk's) gets the step's wall time blocked on
    neighbours' tensors (`wait`) and its whole wall time (`span`).
    """
    t0 = time.perf_counter()
    waited = waited_cpu = 0.0
    inbox.clear_before(step)
    kept: list[np.ndarray] = []
    chunks = list(worker) if isinstance(worker, Sequence) else [worker]
    sends = {"F": send_forward, "B": send_backward}  # by what the output carries (I: "B")
    if routes is not None:  # virtual stages: by the sending virtual stage too ("F3", "B4")
        sends = {**sends, **routes}
    near: dict[tuple[str, int], np.ndarray] = {}  # a chunk's output for a chunk of this device

    def data(m: int) -> np.ndarray:  # FROM_INBOX: the driver wrote the minibatch into a channel
        return inbox.take((step, "F", m), timeout_s) if isinstance(xs, str) else _part(xs, m)

    def give(k: int, a: StageAction, out: Any) -> None:
        if a.near_out:  # the worker reuses its buffers: the next chunk's input is a copy
            near[a.tag_out, a.mb] = np.array(out)
        elif a.sends and a.carries is not None:
            _send(sends.get(a.tag_out), (step, a.tag_out, a.mb), out)
        elif infer:
            kept.append(out)  # a host copy already (StageWorker.infer)

    def take(k: int, a: StageAction) -> Any:
        if not a.receives:
            return None
        nonlocal waited, waited_cpu
        if a.near_in:
            return near.pop((a.tag_in, a.mb))
        t, c = time.perf_counter(), time.thread_time()
        try:
            return inbox.take((step, a.tag_in, a.mb), timeout_s)
        finally:
            waited_cpu += time.thread_time() - c
            waited += time.perf_counter() - t

    last_w = max((i for i, a in enumerate(actions) if a.kind in ("B", "W")), default=-1)

    def call(i: int, a: StageAction, method: str, *args: Any) -> Any:
        if i == last_w and arm is not None and not infer:
            _act(arm, "the gradient all-reduce")
        return _act(getattr(chunks[a.chunk], method), _what(a, method), *args)

    walk(
        enumerate(actions),  # one stage: the action's place stands where a stage's index would
        call,
        data=data,
        take=take,
        give=give,
        labels=lambda m: _part(ys, m),
        scale=scale,
        infer=infer,
    )
    if infer:
        return kept
    if reduce is not None:
        _act(reduce, "the gradient all-reduce")
    if len(chunks) > 1 or isinstance(worker, Sequence):
        out: Finish | list[Finish] = [_act(w.finish, "finish", update) for w in chunks]
    else:
        out = _act(chunks[0].finish, "finish", update)
    if busy is not None:
        busy.wait += waited
        busy.wait_cpu += waited_cpu
        busy.span += time.perf_counter() - t0
    return out


def _what(a: StageAction, method: str) -> str:
    """An action as failures name it ("forward of micro-batch 3")."""
    chunk = f" of virtual stage {a.stage}" if a.stage >= 0 else ""
    return f"{_NAMES.get(method, method)} of micro-batch {a.mb}{chunk}"


_NAMES = {
    "infer": "inference forward",
    "backward_input": "input gradient",
    "backward_weight": "weight gradient",
}


def _part(parts: Sequence[np.ndarray] | None, m: int) -> np.ndarray:
    if parts is None:
        raise ValueError(f"micro-batch {m} is read from the minibatch, but none was given")
    return parts[m]


def _send(send: Send | None, key: Key, value: Any) -> None:
    if send is None:
        raise ValueError(f"{key[1]} output of micro-batch {key[2]} has no neighbour to go to")
    send(key, value)


def _act(fn: Callable[..., Any], what: str, *args: Any) -> Any:
    try:
        return fn(*args)
    except NeighbourFailed:  # a wait inside the action (an all-reduce's): not this stage's fault
        raise
    except Exception as e:
        raise ActionFailed(what, e) from e
