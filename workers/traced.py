"""The arrays a worker process allocated, as Python's tracemalloc counts them (NumPy reports
every array's data to it, in a domain of its own): a measurement beside the ledger's model.

Only when profiling: tracing slows every Python allocation, and its records take memory of
their own (reported, so a reader can take them out of the resident growth).
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from workers.stats import Traced

NUMPY_DOMAIN = np.lib.tracemalloc_domain


def start() -> None:
    """Trace from here on (what was allocated before is not counted)."""
    if not tracemalloc.is_tracing():
        tracemalloc.start(1)


def read() -> Traced | None:
    """NumPy's arrays alive now and the traced peak, or None when not tracing."""
    if not tracemalloc.is_tracing():
        return None
    _, peak = tracemalloc.get_traced_memory()
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.DomainFilter(inclusive=True, domain=NUMPY_DOMAIN)]
    )
    arrays = sum(t.size for t in snap.traces)
    return Traced(arrays=arrays, peak=peak, overhead=tracemalloc.get_tracemalloc_memory())
