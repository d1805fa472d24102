"""SIGTERM handled like Ctrl-C: the run stops, is recorded as interrupted, keeps its checkpoint."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from graphpart.errors import Terminated

_installed = False
_received = False


def _raise(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = True
    raise Terminated()


def terminated(e: BaseException) -> bool:
    """Whether the interrupt `e` comes from SIGTERM: a Terminated, or any KeyboardInterrupt
    once SIGTERM came (a SIGTERM inside a Ray call can come out of it as a plain
    KeyboardInterrupt, not the handler's Terminated)."""
    return isinstance(e, Terminated) or (_received and isinstance(e, KeyboardInterrupt))


def install() -> None:
    """Make SIGTERM raise Terminated (a KeyboardInterrupt) in the main thread: the program's
    choice (`graphpart`), not a library's, so `gp.train` in a user's program leaves it be."""
    global _installed
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)
        _installed = True


def restore() -> None:
    """Install it again if the program had (ray.init replaces SIGTERM's handler with its own,
    which exits with code 15 and no word of ours)."""
    if _installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)
