"""graphpart/engines/workers.py: what Engine and DataParallel share.

Contract: `_all` calls a method on every worker, 0 to n_workers - 1, and returns the results in
that order; `stats` and `events` are `_all` of theirs; leaving the `with` block closes the
transport, also when the block raised; an engine without `n_workers` cannot be built.
"""

from __future__ import annotations

import pytest

from graphpart.engines.workers import Workers


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def call(self, i, method, *args):
        return (i, method, args)

    def get(self, handles):
        return list(handles)

    def close(self) -> None:
        self.closed = True


class Three(Workers):
    def __init__(self) -> None:
        self.transport = FakeTransport()

    @property
    def n_workers(self) -> int:
        return 3


def test_every_worker_in_order_and_closed_on_leaving():
    with pytest.raises(RuntimeError), Three() as w:
        assert w._all("ping", 7) == [(i, "ping", (7,)) for i in range(3)]
        assert w.stats() == [(i, "stats", ()) for i in range(3)]
        assert w.events() == [(i, "events", ()) for i in range(3)]
        raise RuntimeError("leaving by an error")
    assert w.transport.closed


def test_an_engine_must_say_how_many_workers_it_has():
    class Nameless(Workers):
        pass

    with pytest.raises(TypeError, match="n_workers"):
        Nameless()
