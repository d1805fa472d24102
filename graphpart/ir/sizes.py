"""Bytes of arrays, and of the aligned buffers a worker allocates for them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphpart.ir.graph import BATCH, Shape

__all__ = ["ALIGN", "allocated", "flat_elements", "nbytes"]


def nbytes(shape: Shape, rows: int, dtype: Any) -> int:
    """Bytes of an array of `shape` with the batch dimension set to `rows`."""
    return math.prod(rows if d == BATCH else int(d) for d in shape) * np.dtype(dtype).itemsize


# Every buffer a worker allocates starts on a 64-byte boundary (a cache line; what MKL and
# OpenBLAS load fastest, and torch's own allocator's alignment): its allocation is its data
# rounded up to 64 bytes, plus 64 of slack to move the start onto the boundary. One
# parameter's gradient at 8 bytes past a line (a 10-wide bias before it in the one gradient
# buffer) made its gemm 1.3-1.4x slower on this project's AMD EPYC host.
ALIGN = 64


def allocated(data_bytes: int) -> int:
    """Bytes an aligned buffer of `data_bytes` takes: the data rounded up to ALIGN, plus ALIGN."""
    return -(-int(data_bytes) // ALIGN) * ALIGN + ALIGN


def flat_elements(data_bytes: Sequence[int], itemsize: int) -> int:
    """Elements of one buffer that holds aligned buffers of `data_bytes` end to end (each at
    its `allocated` stride; the parameters' gradients): allocated as one such buffer itself,
    it takes exactly the sum of their allocations."""
    return max(sum(allocated(b) for b in data_bytes) - ALIGN, 0) // int(itemsize)
