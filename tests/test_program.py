"""Contract of workers/program.py beyond what the stage and lowering tests check.

A Program binds its kernel calls once, at build time (the backend's table entries and one
getter per operand), without capturing itself: a Program and its bound calls form no
reference cycle, so dropping it frees its buffers at once, with the garbage collector off.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np

from graphpart.ir import mlp
from graphpart.params import init_params
from workers.backends import CpuBackend
from workers.program import Program


def test_a_dropped_program_is_freed_without_the_garbage_collector():
    g = mlp([5, 7, 3], activation="tanh", bias=True, weight_decay=0.1)
    prog = Program(g, init_params(g, seed=1, dtype="float64"), CpuBackend(), 8)
    prog.forward(0, np.ones((4, 5)), np.array([0, 1, 2, 0]), 0.25)
    prog.backward(0, None, 0.25)
    assert prog.regularize() > 0.0
    ref = weakref.ref(prog)
    gc.disable()
    try:
        del prog
        assert ref() is None
    finally:
        gc.enable()
