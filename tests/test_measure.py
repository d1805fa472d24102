"""graphpart.engines.measure: each layer's kernels timed by stage workers in this process.

Contract: `layer_times` returns, for the graph's layers (by number) at each requested row
count, a forward, input-gradient and weight-gradient time and an update per layer, all
positive where the layer does that work (the model's first layer computes no input
gradient, but its call still costs something); `measured_costs` is one figure per layer, the
forward plus the backward at the batch's rows. `replica_buckets` gives the bytes of the buckets
a data-parallel replica of the whole graph all-reduces its gradients in: together every
parameter's gradient (each on a 64-byte line), every one but the last at least the default
bucket size, one bucket for a single replica's small model.
"""

from __future__ import annotations

from graphpart.engines.measure import layer_times, measured_costs, replica_buckets
from graphpart.ir import mlp
from graphpart.optim import make_optimizer


def test_layer_times_cover_every_layer_at_every_row_count():
    g = mlp([12, 16, 16, 3], activation="relu", bias=True, loss="cross_entropy")
    lt = layer_times(g, (1, 4, 8), "float32", make_optimizer("adam", lr=1e-3), repeats=1)
    assert lt.ids == tuple(g.layers) and lt.rows == (1, 4, 8)
    assert all(len(per) == len(g.layers) for per in lt.seconds)
    assert all(v > 0 for per in lt.seconds for t in per for v in t)
    assert lt.warm is not None and all(v > 0 for per in lt.warm for t in per for v in t)
    assert all(u > 0 for u in lt.update)
    assert lt.action_s("B", lt.ids, 8) > 0


def test_measured_costs_one_per_layer():
    g = mlp([12, 16, 16, 3], activation="relu", bias=True, loss="mse")
    costs = measured_costs(g, 8, "float64", repeats=1)
    assert len(costs) == len(g.layers) and all(c > 0 for c in costs)


def test_layer_times_sync_before_each_phase():
    """With `sync`, layer_times calls it before each pass's forwards and backwards and each
    step's updates: five times a step of two passes, (repeats + 1) steps at each row count."""
    g = mlp([12, 16, 3], activation="relu", bias=True, loss="cross_entropy")
    calls: list[int] = []
    layer_times(g, (1, 4), "float32", repeats=2, sync=lambda: calls.append(1))
    assert len(calls) == 5 * (2 + 1) * 2


def test_replica_buckets_hold_every_gradient_cut_at_the_bucket_size():
    from graphpart.plan.memory import param_bytes
    from workers.buckets import DEFAULT_BUCKET_BYTES

    g = mlp([784, 1024, 1024, 1024, 10], activation="relu", bias=True, loss="cross_entropy")
    got = replica_buckets(g, "float32", 2)
    p = param_bytes(g, "float32")
    assert p <= sum(got) <= p + 64 * 2 * len(g.layers)
    assert len(got) > 3 and all(b >= DEFAULT_BUCKET_BYTES for b in got[:-1])
    small = mlp([4, 8, 3], activation="relu", bias=True, loss="cross_entropy")
    assert len(replica_buckets(small, "float64", 2)) == 1
