"""The losses' declarations: softmax cross-entropy and mean squared error."""

from __future__ import annotations

import numpy as np

from graphpart.errors import GraphError
from graphpart.ir.calls import Call, Kernels
from graphpart.ir.opdef import OpDef, Shape, fmt, numel, plus


# -- losses -------------------------------------------------------------------------------------
def _xent_shape(s: list[Shape], attrs: dict) -> Shape:
    o, y = s
    if len(o) != 2 or len(y) != 1 or o[0] != y[0]:
        raise GraphError(
            f"cross_entropy needs logits (B, q) and labels (B,), got {fmt(o)} and {fmt(y)}"
        )
    return ()


def _log_softmax(o: np.ndarray) -> np.ndarray:
    m = o.max(axis=1, keepdims=True)
    return o - m - np.log(np.exp(o - m).sum(axis=1, keepdims=True))


def _xent_forward(ins, a):
    o, y = ins
    lp = _log_softmax(o)
    return -a.get("scale", 1.0 / len(y)) * lp[np.arange(len(y)), y].sum()


def _xent_vjp(g, ins, out, a, needs):
    o, y = ins
    p = np.exp(_log_softmax(o))
    p[np.arange(len(y)), y] -= 1
    return [g * a.get("scale", 1.0 / len(y)) * p, None]


def _xent_jvp(dins, ins, out, a):
    if dins[0] is None:
        return None
    return float((_xent_vjp(1.0, ins, out, a, (True, False))[0] * dins[0]).sum())


def _xent_vjp_jvp(g, dg, ins, dins, out, dout, a, needs):
    o, y = ins
    do = dins[0]
    first = None if dg is None else dg * _xent_vjp(1.0, ins, out, a, needs)[0]
    second = None
    if do is not None:
        p = np.exp(_log_softmax(o))
        pdo = p * do
        second = g * a.get("scale", 1.0 / len(y)) * (pdo - p * pdo.sum(axis=1, keepdims=True))
    return [plus(first, second), None]


CROSS_ENTROPY = OpDef(
    "cross_entropy",
    2,
    _xent_shape,
    _xent_forward,
    _xent_vjp,
    flops=lambda s, o: (5 * numel(s[0]), 2 * numel(s[0])),
    saves=("in0", "in1"),
    kind="loss",
    jvp=_xent_jvp,
    vjp_jvp=_xent_vjp_jvp,
    tangent_saves=("in0",),
    kernels=Kernels(  # the probabilities are written over the saved logits
        forward=Call("softmax_xent_forward", ("in0", "in1", "scale", "in0")),
        input_grads=(Call("softmax_xent_backward", ("in0", "in1", "scale", "d_in0")),),
    ),
)


def _mse_shape(s: list[Shape], attrs: dict) -> Shape:
    o, y = s
    if tuple(o) != tuple(y) or len(o) != 2:
        raise GraphError(
            f"mse needs outputs and targets of the same (B, q) shape, got {fmt(o)} and {fmt(y)}"
        )
    return ()


def _mse_jvp(dins, ins, out, a):
    d = plus(dins[0], None if dins[1] is None else -dins[1])
    if d is None:
        return None
    return a.get("scale", 1.0 / len(ins[0])) * float(((ins[0] - ins[1]) * d).sum())


def _mse_vjp_jvp(g, dg, ins, dins, out, dout, a, needs):
    scale = a.get("scale", 1.0 / len(ins[0]))
    d = plus(dins[0], None if dins[1] is None else -dins[1])
    first = None if dg is None else dg * scale * (ins[0] - ins[1])
    return [plus(first, None if d is None else g * scale * d), None]


MSE = OpDef(
    "mse",
    2,
    _mse_shape,
    forward=lambda ins, a: (
        a.get("scale", 1.0 / len(ins[0])) * 0.5 * float(((ins[0] - ins[1]) ** 2).sum())
    ),
    vjp=lambda g, ins, out, a, needs: [
        g * a.get("scale", 1.0 / len(ins[0])) * (ins[0] - ins[1]),
        None,
    ],
    flops=lambda s, o: (3 * numel(s[0]), 2 * numel(s[0])),
    saves=("in0", "in1"),
    kind="loss",
    jvp=_mse_jvp,
    vjp_jvp=_mse_vjp_jvp,
    tangent_saves=("in0", "in1"),
    kernels=Kernels(
        forward=Call("mse_forward", ("in0", "in1", "scale")),
        input_grads=(Call("mse_backward", ("in0", "in1", "scale", "d_in0")),),
    ),
)


DEFS: tuple[OpDef, ...] = (CROSS_ENTROPY, MSE)
