"""Contract of workers.channels: shared-memory channels between two processes on one node.

A channel made by its reader and attached by its writer carries 2-D float32/float64 arrays
exactly (values, shape, dtype), announced by a 32-byte record; within a step the writer lays
tensors one after another, and a new step starts again at the front; a step that would
overflow the buffer raises ValueError naming the channel. A key's kind is "F" or "B", or with
the sending virtual stage ("F3", "B12": several stages' tensors share a channel's inbox), and
arrives as it was sent. A ChannelInbox hands out what its
channels announced under the sender's key, wakes when a neighbour is told to fail
(NeighbourFailed) or something is `put` through Ray, times out naming the missing tensor, and
leaves no file behind once both ends are closed. A waiting take polls for at most `spin_s`
(0.2 ms) and then sleeps: a long wait costs almost no CPU. Across two real processes (fork) the
same bytes arrive.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from workers.channels import Channel, ChannelInbox, ChannelName, code_kind, kind_code
from workers.push import NeighbourFailed


@pytest.fixture
def name(tmp_path):
    n = ChannelName.new(f"test-{os.getpid()}-{time.monotonic_ns()}", 4096)
    yield n
    for p in (n.data, n.fifo):
        if os.path.exists(p):
            os.unlink(p)


def test_arrays_arrive_exactly_and_steps_restart_at_the_front(name):
    reader, writer = Channel.create(name), Channel.attach(name)
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.linspace(0, 1, 10).reshape(5, 2)
    writer.send((1, "F", 0), a)
    writer.send((1, "B", 1), b)
    got = dict(reader.receive())
    assert set(got) == {(1, "F", 0), (1, "B", 1)}
    np.testing.assert_array_equal(got[(1, "F", 0)], a)
    assert got[(1, "F", 0)].dtype == np.float32 and got[(1, "B", 1)].dtype == np.float64
    np.testing.assert_array_equal(got[(1, "B", 1)], b)
    assert reader.receive() == []
    writer.send((2, "F", 0), a + 1)  # the next step reuses the front of the buffer
    ((key, view),) = reader.receive()
    assert key == (2, "F", 0)
    np.testing.assert_array_equal(view, a + 1)
    writer.close()
    reader.close()
    assert not os.path.exists(name.data) and not os.path.exists(name.fifo)


def test_virtual_stage_kinds_round_trip(name):
    kinds = ["F", "B", "F0", "B0", "F3", "B12"]
    assert [code_kind(kind_code(k)) for k in kinds] == kinds
    assert len({kind_code(k) for k in kinds}) == len(kinds)
    reader, writer = Channel.create(name), Channel.attach(name)
    a = np.ones((2, 3))
    for k in kinds:
        writer.send((7, k, 1), a)
    assert [key for key, _ in reader.receive()] == [(7, k, 1) for k in kinds]
    writer.close()
    reader.close()


def test_a_step_larger_than_the_buffer_is_refused(name):
    reader, writer = Channel.create(name), Channel.attach(name)
    with pytest.raises(ValueError, match="more than its 4096"):
        writer.send((1, "F", 0), np.zeros((1, 600)))
    writer.close()
    reader.close()


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_inbox_takes_by_key_wakes_on_fail_and_put_and_times_out(name):
    reader, writer = Channel.create(name), Channel.attach(name)
    inbox = ChannelInbox([reader])
    threading.Timer(0.2, lambda: writer.send((3, "F", 1), np.ones((2, 2)))).start()
    t0 = time.monotonic()
    np.testing.assert_array_equal(inbox.take((3, "F", 1), 10), np.ones((2, 2)))
    assert time.monotonic() - t0 < 5
    threading.Timer(0.2, lambda: inbox.put((3, "B", 0), "via ray")).start()
    assert inbox.take((3, "B", 0), 10) == "via ray"
    threading.Timer(0.2, lambda: inbox.fail(3, "stage 1 failed")).start()
    t0 = time.monotonic()
    with pytest.raises(NeighbourFailed, match="stage 1 failed"):
        inbox.take((3, "F", 2), 30)
    assert time.monotonic() - t0 < 5  # woken, not timed out
    with pytest.raises(TimeoutError, match="no B tensor of micro-batch 5"):
        inbox.take((4, "B", 5), 0.3)
    writer.close()
    inbox.close()
    assert not os.path.exists(name.data) and not os.path.exists(name.fifo)


def test_a_long_wait_sleeps_after_a_short_poll(name):
    reader = Channel.create(name)
    inbox = ChannelInbox([reader])
    assert 0 < inbox.spin_s <= 1e-3
    # the waiting thread's own CPU: a BLAS pool of an earlier test may still spin in this process
    cpu, wall = time.thread_time(), time.monotonic()
    with pytest.raises(TimeoutError):
        inbox.take((0, "F", 0), 0.5)
    wall, cpu = time.monotonic() - wall, time.thread_time() - cpu
    assert wall >= 0.5
    assert cpu < 0.1 * wall, f"a 0.5 s wait used {cpu:.3f} s of CPU: it spun"
    inbox.close()


def test_between_two_processes(name):
    reader = Channel.create(name)
    a = np.random.default_rng(0).standard_normal((7, 9))
    pid = os.fork()
    if pid == 0:  # the writer, in its own process
        try:
            w = Channel.attach(name)
            w.send((1, "F", 0), a)
            w.close()
        finally:
            os._exit(0)
    inbox = ChannelInbox([reader])
    got = inbox.take((1, "F", 0), 10)
    os.waitpid(pid, 0)
    np.testing.assert_array_equal(got, a)
    inbox.close()
