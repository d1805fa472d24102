"""The op registry: per op its shape rule, reference forward, VJP, JVP, FLOPs and saved tensors.

Every op is declared once (an OpDef, graphpart/ir/opdef.py): matmul, bias_add, l2 and add here,
the activations in graphpart/ir/activations.py, the losses in graphpart/ir/losses.py; this
module gathers them into REGISTRY. The forward and VJP rules are plain NumPy and serve as the
reference (the oracle); device backends (workers/backends.py) supply faster kernels that
must agree with them. Conventions, batch-major (x is B x d, a weight W is out x in):

    matmul     z = x W^T                      dx = dz W,  dW = dz^T x
    bias_add   z = m + b                      dm = dz,    db = sum_rows(dz)
    relu, sigmoid, tanh, identity: h = phi(z) dz = dh * phi'(z), computed from the output h
    gelu       h = z sigmoid(2u), u = c (z + a z^3) (tanh form)   dz = dh * gelu'(z), from z
    cross_entropy  L = scale * sum_i -log softmax(o_i)[y_i]        dL/do = scale (p - onehot y)
    mse            L = scale * sum_i 1/2 ||o_i - y_i||^2          dL/do = scale (o - y)
    l2         s = lambda/2 sum_W ||W||_F^2   ds/dW = lambda W
    add        J = L + s                      dL = dJ, ds = dJ

`kernels` names the executor's kernels (graphpart/ir/calls.py): keys into each backend's kernel
table (workers/kernels/cpu.py, cuda.py) with their operands by role, so that lowering and the
executor dispatch by table and a new op touches its declaration module (this file,
activations.py or losses.py) and the kernel files only.

`scale` is 1/N for a batch of N samples; a pipeline runs each micro-batch with scale = 1/N of
the whole batch, so summed micro-batch gradients equal the whole-batch gradient.

`saves` names what the VJP reads: "in0", "in1", ... (inputs by position) and "out". The memory
model counts the saved tensors that are not parameters as cached activations, and the reference
autodiff hands the VJP only the saved tensors, so a wrong declaration fails the tests.

Forward mode, beside each VJP (graphpart/hvp.py runs them; a tangent None means zero):

    jvp(dins, ins, out, attrs) -> dout        the tangent of the output along the input tangents
    vjp_jvp(g, dg, ins, dins, out, dout, attrs, needs) -> [d(input cotangent)]

`vjp_jvp` is the tangent of the VJP itself (forward-over-reverse): the VJP is differentiated
along the forward tangents (dins, dout) and the tangent dg of the incoming cotangent. It sees
the same saved tensors as the VJP, and of the tangents only those `tangent_saves` names (same
spelling as `saves`): what a Hessian-vector product keeps beyond a gradient's activations.

    matmul     dz = dx W^T + x dW^T           d(dx) = dg W + g dW,  d(dW) = dg^T x + g^T dx
    bias_add   dz = dm + db                   d(dm) = dg,  d(db) = sum_rows(dg)
    phi        dh = phi'(z) dz                d(dz) = dg phi'(z) + g phi''(z) dz, from h and dh
    cross_entropy  dL = scale <p - onehot y, do>   d(do) = scale (dg (p - onehot y)
                                                          + g (p do - p <p, do>))
    mse        dL = scale <o - y, do - dy>    d(do) = scale (dg (o - y) + g (do - dy))
    l2         ds = lambda sum_W <W, dW>      d(dW) = lambda (dg W + g dW)
    add        dJ = dL + ds                   d(dL) = d(ds) = dg
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from graphpart.errors import GraphError
from graphpart.ir import activations, losses
from graphpart.ir.activations import ACT_CODE, AFTER_BIAS
from graphpart.ir.calls import Call, Kernels
from graphpart.ir.opdef import OpDef, Shape, fmt, numel, plus

__all__ = ["ACTIVATIONS", "ACT_CODE", "LOSSES", "REGISTRY", "OpDef", "Shape", "get", "register"]

ACTIVATIONS: tuple[str, ...] = tuple(d.name for d in activations.DEFS)
LOSSES: tuple[str, ...] = tuple(d.name for d in losses.DEFS)


REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    REGISTRY[opdef.name] = opdef
    return opdef


def get(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise GraphError(f"unknown op {name!r}; known ops: {', '.join(sorted(REGISTRY))}") from None


# -- matmul -------------------------------------------------------------------------------------
def _matmul_shape(s: list[Shape], attrs: dict) -> Shape:
    x, w = s
    if len(x) != 2 or len(w) != 2:
        raise GraphError(f"matmul needs 2-D operands, got {fmt(x)} and {fmt(w)}")
    if x[1] != w[1]:
        raise GraphError(
            f"matmul: input has {x[1]} features but the weight expects {w[1]} "
            f"(shapes {fmt(x)} and {fmt(w)})"
        )
    return (x[0], w[0])


def _matmul_vjp(g, ins, out, attrs, needs):
    x, w = ins
    return [g @ w if needs[0] else None, g.T @ x if needs[1] else None]


def _matmul_jvp(dins, ins, out, attrs):
    (dx, dw), (x, w) = dins, ins
    return plus(None if dx is None else dx @ w.T, None if dw is None else x @ dw.T)


def _matmul_vjp_jvp(g, dg, ins, dins, out, dout, attrs, needs):
    (x, w), (dx, dw) = ins, dins
    dgx = plus(None if dg is None else dg @ w, None if dw is None else g @ dw)
    dgw = plus(None if dg is None else dg.T @ x, None if dx is None else g.T @ dx)
    return [dgx if needs[0] else None, dgw if needs[1] else None]


register(
    OpDef(
        "matmul",
        2,
        _matmul_shape,
        forward=lambda ins, a: ins[0] @ ins[1].T,
        vjp=_matmul_vjp,
        flops=lambda s, o: (2 * s[0][0] * s[0][1] * o[1], 4 * s[0][0] * s[0][1] * o[1]),
        weight_flops=lambda s, o: 2 * s[0][0] * s[0][1] * o[1],  # dW = dz^T x
        saves=("in0", "in1"),
        jvp=_matmul_jvp,
        vjp_jvp=_matmul_vjp_jvp,
        tangent_saves=("in0", "in1"),
        kernels=Kernels(
            forward=Call("matmul_nt", ("in0", "in1", "out")),
            weight_grads=(Call("matmul_tn", ("d_out", "in0", "d_in1", "beta"), ("d_out",)),),
            input_grads=(Call("matmul_nn", ("d_out", "in1", "d_in0")),),
        ),
    )
)


# -- bias_add -----------------------------------------------------------------------------------
def _bias_shape(s: list[Shape], attrs: dict) -> Shape:
    m, b = s
    if len(m) != 2 or len(b) != 1 or m[1] != b[0]:
        raise GraphError(f"bias_add needs (B, n) and (n,), got {fmt(m)} and {fmt(b)}")
    return m


register(
    OpDef(
        "bias_add",
        2,
        _bias_shape,
        forward=lambda ins, a: ins[0] + ins[1],
        vjp=lambda g, ins, out, a, needs: [
            g if needs[0] else None,
            g.sum(axis=0) if needs[1] else None,
        ],
        flops=lambda s, o: (numel(o), numel(o)),
        weight_flops=lambda s, o: numel(o),  # db = the column sums of dz
        saves=(),
        jvp=lambda dins, ins, out, a: plus(*dins),
        vjp_jvp=lambda g, dg, ins, dins, out, dout, a, needs: [
            dg if needs[0] else None,
            None if dg is None or not needs[1] else dg.sum(axis=0),
        ],
        kernels=Kernels(
            forward=Call("bias_add", ("in0", "in1", "out")),
            weight_grads=(Call("sum_rows", ("d_out", "d_in1", "accumulate")),),
            fuses=MappingProxyType(AFTER_BIAS),
            in_place=True,  # dm = dz: one buffer, no kernel
        ),
    )
)


# -- activations and losses: declared in their own modules, registered here in this order
for _d in (*activations.DEFS, *losses.DEFS):
    register(_d)


# -- regulariser and sum ------------------------------------------------------------------------
def _l2_shape(s: list[Shape], attrs: dict) -> Shape:
    lam = attrs.get("weight_decay", 0.0)
    if not (isinstance(lam, int | float) and lam >= 0 and np.isfinite(lam)):
        raise GraphError(f"l2: weight_decay={lam!r}; must be a finite number >= 0")
    return ()


def _l2_jvp(dins, ins, out, a):
    terms = [
        float((w.astype(np.float64) * d).sum())
        for w, d in zip(ins, dins, strict=True)
        if d is not None
    ]
    return a.get("weight_decay", 0.0) * sum(terms) if terms else None


def _l2_vjp_jvp(g, dg, ins, dins, out, dout, a, needs):
    lam = a.get("weight_decay", 0.0)
    return [
        plus(None if dg is None else dg * lam * w, None if d is None else g * lam * d)
        if n
        else None
        for w, d, n in zip(ins, dins, needs, strict=True)
    ]


register(
    OpDef(
        "l2",
        None,
        _l2_shape,
        forward=lambda ins, a: (
            0.5
            * a.get("weight_decay", 0.0)
            * float(sum(float((w.astype(np.float64) ** 2).sum()) for w in ins))
        ),
        vjp=lambda g, ins, out, a, needs: [
            g * a.get("weight_decay", 0.0) * w if n else None
            for w, n in zip(ins, needs, strict=True)
        ],
        flops=lambda s, o: (2 * sum(numel(x) for x in s), 2 * sum(numel(x) for x in s)),
        saves=("in*",),
        kind="scalar",
        jvp=_l2_jvp,
        vjp_jvp=_l2_vjp_jvp,
        tangent_saves=("in*",),
        kernels=Kernels(  # once per step, not per micro-batch: lambda W is counted once
            step=Call("weight_decay", ("in*", "d_in*", "attr.weight_decay", "accumulate")),
            enabled_by="weight_decay",
        ),
    )
)


def _add_shape(s: list[Shape], attrs: dict) -> Shape:
    if any(tuple(x) != tuple(s[0]) for x in s):
        raise GraphError(f"add needs operands of one shape, got {', '.join(map(fmt, s))}")
    return s[0]


register(
    OpDef(
        "add",
        None,
        _add_shape,
        forward=lambda ins, a: sum(ins[1:], ins[0]),
        vjp=lambda g, ins, out, a, needs: [g if n else None for n in needs],
        flops=lambda s, o: ((len(s) - 1) * numel(o), 0),
        saves=(),
        kind="scalar",
        jvp=lambda dins, ins, out, a: plus(*dins),
        vjp_jvp=lambda g, dg, ins, dins, out, dout, a, needs: [dg if n else None for n in needs],
    )
)
