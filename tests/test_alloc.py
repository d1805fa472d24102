"""The C allocator's settings (workers/alloc.py).

Contract: on glibc `settle` succeeds and, with a fixed threshold, a large array freed leaves
the process's resident memory (it was mapped, not carved from the heap), even after a larger
block was freed before (which by glibc's default raises the threshold so the next ones stay
resident).
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import numpy as np
from workers import alloc
from workers.hwm import read_rss_parts
settled = alloc.settle(fixed_threshold=True)
big = np.ones(2 << 20); del big  # 16 MiB freed: glibc's default would raise the threshold here
base = read_rss_parts()["RssAnon"]
a = np.ones(1 << 20); del a  # 8 MiB, under the raised threshold
print(settled, (read_rss_parts()["RssAnon"] - base) >> 20)
"""


def test_freed_arrays_leave_the_resident_set():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) < 2, f"an 8 MiB array freed left {out[1]} MiB resident"
