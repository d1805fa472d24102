"""A stage worker's warm-up: every kernel compiled (or loaded) and its products run once at
their real shapes, before the resident-memory baseline."""

from __future__ import annotations

import math

import numpy as np

from graphpart.ir.graph import BATCH, Graph, Var
from graphpart.optim import Optimizer
from graphpart.params import init_params
from workers.backends import Backend
from workers.ledger import Ledger
from workers.program import Program


def warm_up(
    graph: Graph,
    bk: Backend,
    opt: Optimizer,
    dtype: np.dtype,
    output: str | None,
    input_grad: bool,
    rows: int,
) -> None:
    """Compile (or load from cache) every kernel this stage uses, on a 2-wide copy of its graph
    (whose parameters it draws as a worker given an Init does, so the generator's code is paged
    in too), then run its products once at their real shapes, so the resident-memory baseline
    taken afterwards holds the process's fixed costs: the compiler's memory, and the BLAS
    library's work buffers, which it maps once and touches as far as a product's shape needs
    (0.5-2 MiB a stage here, kept for the process's life; docs/memory.md)."""
    small = Graph(
        tuple(
            Var(v.name, v.role, tuple(d if d == BATCH else 2 for d in v.shape), v.layer)
            for v in graph.vars
        ),
        graph.ops,
        graph.output,
        graph.loss,
    )
    init_params(small, 0, dtype)  # the generator's code, paged in before the baseline
    prog, x = exercise(small, bk, dtype, output, input_grad, 2)
    prog.regularize()
    w, gr = np.ones(4, dtype), np.ones(4, dtype)
    bk.sgd_update(w, gr, np.zeros(4, dtype), 0.1, 0.9, 0.0)
    bk.adam_update(w, gr, np.zeros(4, dtype), np.zeros(4, dtype), 0.1, 0.9, 0.999, 1e-8, 1, 0.0)
    prog.infer(x)
    if max((math.prod(v.concrete_shape(1)) for v in graph.params), default=0) >= BLAS_SIZEABLE:
        exercise(graph, bk, dtype, output, input_grad, max(int(rows), 1))  # freed on return


BLAS_SIZEABLE = 1 << 16  # weights of fewer elements touch a few pages of BLAS's buffers at most


def exercise(
    graph: Graph, bk: Backend, dtype: np.dtype, output: str | None, input_grad: bool, rows: int
) -> tuple[Program, np.ndarray]:
    """A throwaway Program of `graph` at `rows` rows, two micro-batches forward and backward
    (the second takes the accumulating paths); returns it and its input."""
    params = {v.name: np.full(v.concrete_shape(rows), 0.5 / rows, dtype) for v in graph.params}
    prog = Program(
        graph, params, bk, rows, Ledger(keep_events=False), output=output, input_grad=input_grad
    )
    x = np.ones(graph.var(prog.input).concrete_shape(rows), dtype)
    y = None
    if prog.labels:
        lab = graph.var(prog.labels[0])
        y = (
            np.zeros(rows, np.int64)
            if lab.shape == (BATCH,)
            else np.ones(lab.concrete_shape(rows), dtype)
        )
    g = None if output is None else np.ones(graph.var(output).concrete_shape(rows), dtype)
    for mb in (0, 1):
        prog.forward(mb, x, y, 0.5)
        prog.backward(mb, g, 0.5)
    return prog, x
