"""Data set records and splitting (graphpart.run.dataset).

Contract: split_indices partitions range(n) into sorted train and test indices, stratified by
labels when given and fixed by the seed; batches cover every index once an epoch in an order
fixed by (seed, epoch), drop the short last batch on request, and refuse a batch size < 1
eagerly with a ConfigError.
"""

from __future__ import annotations

import numpy as np
import pytest

from graphpart.errors import ConfigError
from graphpart.run import data


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_split_indices_partition_and_stratify():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train, test = data.split_indices(100, 0.3, seed=1, labels=labels)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    assert len(test) == 30
    assert list(np.bincount(labels[test])) == [15, 9, 6]
    t2 = data.split_indices(100, 0.3, seed=1, labels=labels)[1]
    np.testing.assert_array_equal(test, t2)


def test_batches_cover_every_index_once():
    out = list(data.batches(103, 10, seed=0, epoch=0))
    assert [len(b) for b in out] == [10] * 10 + [3]
    assert np.array_equal(np.sort(np.concatenate(out)), np.arange(103))


def test_batches_drop_last():
    out = list(data.batches(103, 10, seed=0, epoch=0, drop_last=True))
    assert [len(b) for b in out] == [10] * 10
    assert len(np.unique(np.concatenate(out))) == 100


def test_batches_reproducible_per_epoch():
    a = np.concatenate(list(data.batches(50, 8, seed=1, epoch=2)))
    b = np.concatenate(list(data.batches(50, 8, seed=1, epoch=2)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, np.concatenate(list(data.batches(50, 8, seed=1, epoch=3))))
    assert not np.array_equal(a, np.concatenate(list(data.batches(50, 8, seed=2, epoch=2))))


@pytest.mark.parametrize("bs", [0, -1])
def test_batches_bad_batch_size_raises_eagerly(bs):
    with pytest.raises(ConfigError) as exc:
        data.batches(10, bs, seed=0, epoch=0)  # no iteration needed
    assert f"batch_size={bs}" in _one_line(exc)
