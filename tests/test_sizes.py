"""Bytes of arrays and of their aligned allocations (graphpart/ir/sizes.py).

Contract: `nbytes` is an array's data with the batch dimension set; `allocated` is that data
rounded up to ALIGN (64) bytes plus ALIGN, what a worker's buffer takes so that it can start on
a line; `flat_elements` lays such buffers end to end at their `allocated` strides, less the
last one's slack, so that allocated as one buffer it takes exactly the sum of theirs.
"""

from __future__ import annotations

from graphpart.ir.graph import BATCH
from graphpart.ir.sizes import ALIGN, allocated, flat_elements, nbytes


def test_nbytes_sets_the_batch_dimension():
    assert nbytes((BATCH, 3), 5, "float32") == 60
    assert nbytes((2, 3), 7, "float64") == 48


def test_an_aligned_allocation_is_its_data_in_whole_lines_plus_one():
    assert ALIGN == 64
    assert [allocated(n) for n in (0, 1, 64, 65, 4096)] == [64, 128, 128, 192, 4160]


def test_buffers_end_to_end_take_the_sum_of_their_allocations():
    sizes = [40, 4096, 4]  # bytes
    n = flat_elements(sizes, 4)
    assert n * 4 == (128 + 4160 + 128) - 64
    assert allocated(n * 4) == sum(allocated(b) for b in sizes)
    assert flat_elements([], 8) == 0
