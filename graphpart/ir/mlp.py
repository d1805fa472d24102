"""Builder for multilayer perceptrons: x, W1, (b1), z1, h1, ..., o, y, L, s, J."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphpart.errors import GraphError
from graphpart.ir.graph import BATCH, Graph, Op, Var
from graphpart.ir.ops import ACTIVATIONS, LOSSES


def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    bias: bool = False,
    loss: str = "cross_entropy",
    weight_decay: float = 0.0,
) -> Graph:
    """The textbook graph generalised to any depth; `sizes` is [d, h1, ..., q].

    Layer i (1-based) holds W_i, b_i, its matmul, bias add and activation; the last layer has
    no activation (its pre-activation is the output o) and also holds the loss L. The
    regulariser s and the objective J = L + s belong to no layer (layer 0): they read
    parameters from every layer, and a partition splits s into per-stage parts.
    With bias, the matmul output is m_i and z_i = m_i + b_i; without, z_i = x W_i^T directly.

    The defaults build the textbook's graph itself (no bias, lambda = 0: the nodes x, W1, z1,
    h1, W2, o, L, s, J). Training defaults are another matter: `gp.train`, the CLI and a TOML
    file all start from the embedded config (bias on, weight_decay 1e-4, ...), which is the
    one source of those.

    >>> g = mlp([64, 32, 10], activation="relu", bias=True, weight_decay=1e-4)
    >>> [v.name for v in g.vars]
    ['x', 'W1', 'm1', 'b1', 'z1', 'h1', 'W2', 'm2', 'b2', 'o', 'y', 'L', 's', 'J']
    >>> [o.op for o in g.ops], g.output
    (['matmul', 'bias_add', 'relu', 'matmul', 'bias_add', 'cross_entropy', 'l2', 'add'], 'J')
    """
    sizes = [int(s) if isinstance(s, np.integer) else s for s in sizes]
    if len(sizes) < 2:
        raise GraphError(f"sizes={sizes}: need at least [inputs, outputs], e.g. [64, 32, 10]")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise GraphError(f"sizes={sizes}: size {s!r} is not a positive integer")
    if activation not in ACTIVATIONS:
        raise GraphError(f"activation={activation!r}; valid: {', '.join(ACTIVATIONS)}")
    if loss not in LOSSES:
        raise GraphError(f"loss={loss!r}; valid: {', '.join(LOSSES)}")
    if not isinstance(weight_decay, int | float) or not weight_decay >= 0:
        raise GraphError(f"weight_decay={weight_decay!r}; must be a number >= 0")

    n = len(sizes) - 1
    vars_: list[Var] = [Var("x", "input", (BATCH, sizes[0]), 1)]
    ops: list[Op] = []
    weights: list[str] = []
    prev = "x"
    for i in range(1, n + 1):
        last = i == n
        fan_in, fan_out = sizes[i - 1], sizes[i]
        w = f"W{i}"
        vars_.append(Var(w, "param", (fan_out, fan_in), i))
        weights.append(w)
        z = "o" if last else f"z{i}"
        m = f"m{i}" if bias else z
        vars_.append(Var(m, "value", (BATCH, fan_out), i))
        ops.append(Op(f"matmul{i}", "matmul", (prev, w), m, i))
        if bias:
            b = f"b{i}"
            vars_.append(Var(b, "param", (fan_out,), i))
            vars_.append(Var(z, "value", (BATCH, fan_out), i))
            ops.append(Op(f"bias{i}", "bias_add", (m, b), z, i))
        if last:
            prev = z
        else:
            h = f"h{i}"
            vars_.append(Var(h, "value", (BATCH, fan_out), i))
            ops.append(Op(f"{activation}{i}", activation, (z,), h, i))
            prev = h
    y_shape = (BATCH,) if loss == "cross_entropy" else (BATCH, sizes[-1])
    vars_.append(Var("y", "label", y_shape, n))
    vars_.append(Var("L", "value", (), n))
    ops.append(Op("loss", loss, ("o", "y"), "L", n))
    vars_.append(Var("s", "value", (), 0))
    ops.append(Op("l2", "l2", tuple(weights), "s", 0, (("weight_decay", float(weight_decay)),)))
    vars_.append(Var("J", "value", (), 0))
    ops.append(Op("objective", "add", ("L", "s"), "J", 0))
    info = (
        ("sizes", tuple(sizes)),
        ("activation", activation),
        ("bias", bool(bias)),
        ("loss", loss),
        ("weight_decay", float(weight_decay)),
    )
    return Graph(tuple(vars_), tuple(ops), output="J", loss="L", info=info).validate()
