"""SIGTERM handled like Ctrl-C (graphpart/run/sigterm.py).

Contract: the handler raises Terminated (a KeyboardInterrupt); `terminated(e)` says whether an
interrupt comes from SIGTERM: a Terminated always, a plain KeyboardInterrupt only once the
handler has run (a SIGTERM inside a Ray call can come out of it as a plain KeyboardInterrupt,
and the run must still exit 143 and say SIGTERM), never another exception.
"""

from __future__ import annotations

import pytest

from graphpart.errors import Terminated
from graphpart.run import sigterm


def test_an_interrupt_after_sigterm_is_sigterms(monkeypatch):
    monkeypatch.setattr(sigterm, "_received", False)
    assert sigterm.terminated(Terminated())
    assert not sigterm.terminated(KeyboardInterrupt())  # Ctrl-C
    with pytest.raises(Terminated):
        sigterm._raise(15, None)
    assert sigterm.terminated(KeyboardInterrupt())  # what Ray's get raises in its place
    assert not sigterm.terminated(ValueError())
