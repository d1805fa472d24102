"""graphpart.tools.compare.rates: this machine's rates for plan --auto, alone and together.

Contract: `measure_rates` gives positive matmul, copy and per-layer rates measured in this
process, and with `together=n` the same measured again by 2 .. n processes at once
(`Rates.together`, one Rates per count of `counts`: 2, 4, 8, ... and n; the hop measured
alone); `slowest` of several
processes' rates keeps each figure's slowest: the lowest rate, the longest time. Where a graph
is given, each together-rates also carry `ring_copies` from a ring all-reduce of its gradients'
bytes and a ring message's latency `ring_hop_s` from a small ring, timed over n processes
(`ring_seconds`, the real channels and ring arithmetic: the gradients in the buckets a
replica all-reduces them in, a ring each, one round), such that `Rates.ring_s` gives the
round's time back for the gradients' bytes. With `calls`, `Rates.call_s` is the driver's call
to `devices` Ray actors and their replies (graphpart.engines.call_seconds, on the Ray already
running); 0 without, and 0 with a warning naming why where no Ray can be started or joined.
With `whole_threads`, `Rates.whole` holds the same rates with that many threads (a one-device
run in process on every core), where they differ from a device's.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from graphpart.ir import mlp
from graphpart.plan.auto import Rates
from graphpart.plan.layer_times import LayerTimes
from graphpart.plan.memory import param_bytes
from graphpart.plan.workload import Workload
from graphpart.tools.compare.rates import (
    counts,
    measure_rates,
    ring_copies,
    ring_seconds,
    slowest,
)

LT = LayerTimes((1,), (2, 4), (((1.0, 0.0, 2.0),), ((2.0, 0.0, 4.0),)), (0.5,))


def test_slowest_keeps_each_figures_slowest():
    a = Rates(flops_per_s=4e9, copy_bytes_per_s=1e9, hop_s=1e-4, by_rows=((4, 1e9), (8, 3e9)))
    b = Rates(flops_per_s=3e9, copy_bytes_per_s=2e9, hop_s=2e-4, by_rows=((4, 2e9), (8, 2e9)))
    a, b = replace(a, layers=LT), replace(b, layers=replace(LT, update=(0.75,)))
    got = slowest([a, b])
    assert (got.flops_per_s, got.copy_bytes_per_s, got.hop_s) == (3e9, 1e9, 2e-4)
    assert got.by_rows == ((4, 1e9), (8, 2e9))
    assert got.layers is not None and got.layers.update == (0.75,)
    assert got.layers.seconds == LT.seconds


@pytest.mark.ray  # starts other processes
def test_rates_alone_and_two_processes_at_once():
    g = mlp([12, 16, 3], activation="relu", bias=True, loss="cross_entropy")
    w = Workload(batch=8, optimizer="adam")
    r = measure_rates(1, seconds=0.01, graph=g, workload=w, devices=2, together=2)
    assert [n for n, _ in r.together] == [2]
    ((_, two),) = r.together
    for x in (r, two):
        assert x.flops_per_s > 0 and x.copy_bytes_per_s > 0 and x.layers is not None
        assert x.layers.ids == tuple(g.layers) and all(u > 0 for u in x.layers.update)
        assert dict(x.by_rows).keys() == dict(r.by_rows).keys()
    assert two.hop_s == r.hop_s and r.busy(2) is two
    assert two.ring_s(param_bytes(g), 2) > 0 and two.ring_hop_s is not None
    assert measure_rates(1, seconds=0.01, together=1).together == ()


def test_counts_are_powers_of_two_and_the_most():
    assert counts(1) == [] and counts(2) == [2] and counts(3) == [2, 3]
    assert counts(8) == [2, 4, 8] and counts(12) == [2, 4, 8, 12]


def test_ring_copies_give_the_measured_ring_back():
    r = Rates(flops_per_s=1.0, copy_bytes_per_s=2e9, hop_s=1e-4)
    for n, nbytes, seconds in ((2, 1e7, 0.01), (3, 3e8, 0.5), (4, 4e6, 2e-3)):
        c = ring_copies(r, n, int(nbytes), seconds)
        assert replace(r, ring_copies=c).ring_s(nbytes, n) == pytest.approx(seconds)
    assert ring_copies(r, 2, 10**6, 1e-5) == 0.0  # faster than its hops: no copies
    fast = replace(r, ring_hop_s=1e-6)  # a ring message's own latency, where measured
    c = ring_copies(fast, 2, 10**6, 1e-3)
    assert replace(fast, ring_copies=c).ring_s(10**6, 2) == pytest.approx(1e-3)


@pytest.mark.ray  # starts other processes
def test_a_ring_over_processes_takes_time():
    small, big, buckets = ring_seconds(2, (8192, 2**22, (2**21, 2**20, 2**20)), repeats=2)
    assert 0 < small < big < 10 and 0 < buckets < 10  # a round of three buckets' rings


def test_a_ring_that_cannot_run_keeps_the_models_copies(monkeypatch):
    """Where the ring cannot be timed (a full /dev/shm, say), the rates keep the model's
    copies and latency, with a warning: the search still runs."""
    from graphpart.tools.compare import rates as mod

    def fail(n, sizes):
        raise RuntimeError("a process exited with -7: Bus error")

    monkeypatch.setattr(mod, "ring_seconds", fail)
    r = Rates(flops_per_s=1.0, copy_bytes_per_s=1e9, hop_s=1e-4)
    with pytest.warns(UserWarning, match="Bus error"):
        assert mod._with_ring(r, 2, (10**6,)) == r


@pytest.mark.ray
def test_calls_time_the_drivers_call_to_the_workers(ray_session):
    r = measure_rates(1, seconds=0.01, devices=2, calls=True)
    assert 0 < r.call_s < 0.5 and r.together == ()
    assert ray_session.is_initialized()  # the session's Ray, used and left running
    assert measure_rates(1, seconds=0.01, devices=2).call_s == 0.0


def test_a_ray_that_cannot_start_leaves_the_call_out(monkeypatch):
    """Where no Ray can be started or joined, the rates keep call_s 0, with a warning that
    names why: the search still runs."""
    from graphpart.tools.compare import rates as mod

    def fail(devices, address=""):
        raise ConnectionError(f"could not join {address}")

    monkeypatch.setattr(mod, "call_seconds", fail)
    with pytest.warns(UserWarning, match="could not join 10.0.0.9:6379"):
        assert mod._call_s(2, "10.0.0.9:6379") == 0.0


def test_whole_threads_measure_a_one_device_run_on_every_core():
    g = mlp([12, 16, 3], activation="relu", bias=True, loss="cross_entropy")
    w = Workload(batch=8, optimizer="adam")
    r = measure_rates(1, seconds=0.01, graph=g, workload=w, whole_threads=2)
    assert r.whole is not None and r.whole.layers is not None and r.whole.hop_s == r.hop_s
    assert r.whole.flops_per_s > 0 and r.one_device is r.whole
    assert measure_rates(1, seconds=0.01, whole_threads=1).whole is None  # the same threads
