"""The op registry: per op its shape rule, reference forward, VJP, JVP, FLOPs and saved tensors.

Every op is declared once, here. The forward and VJP rules are plain NumPy and serve as the
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
executor dispatch by table and a new op touches this file and the kernel files only.

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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from graphpart.errors import GraphError
from graphpart.ir.calls import Call, Kernels

Shape = tuple[Any, ...]
ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh", "gelu")
LOSSES = ("cross_entropy", "mse")
# The codes the shared elementwise kernels (act_forward, bias_act_forward, act_backward) branch on.
ACT_CODE: dict[str, int] = {"identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: int | None  # None: any number of inputs
    shape: Callable[[list[Shape], dict], Shape]
    forward: Callable[[list[np.ndarray], dict], np.ndarray]
    vjp: Callable[[np.ndarray, list, Any, dict, Sequence[bool]], list]
    flops: Callable[[list[tuple[int, ...]], tuple[int, ...]], tuple[int, int]]  # (fwd, bwd)
    saves: tuple[str, ...]
    kind: str = "tensor"  # "tensor" | "loss" | "scalar"
    jvp: Callable[[list, list, Any, dict], Any] | None = None
    vjp_jvp: Callable[..., list] | None = None
    tangent_saves: tuple[str, ...] = ()
    kernels: Kernels = Kernels()

    def tangent_inputs(self, n_inputs: int) -> list[int]:
        """Positions of the inputs whose tangents `vjp_jvp` reads."""
        if "in*" in self.tangent_saves:
            return list(range(n_inputs))
        return [int(s[2:]) for s in self.tangent_saves if s.startswith("in")]

    @property
    def tangent_output(self) -> bool:
        return "out" in self.tangent_saves

    def saved_inputs(self, n_inputs: int) -> list[int]:
        if "in*" in self.saves:
            return list(range(n_inputs))
        return [int(s[2:]) for s in self.saves if s.startswith("in")]

    @property
    def saves_output(self) -> bool:
        return "out" in self.saves


REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    REGISTRY[opdef.name] = opdef
    return opdef


def get(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise GraphError(f"unknown op {name!r}; known ops: {', '.join(sorted(REGISTRY))}") from None


def _numel(shape: Sequence[int]) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _plus(*terms: Any) -> Any:
    """The sum of the terms that are not None (None stands for a zero tangent); None if all are."""
    out = None
    for t in terms:
        if t is not None:
            out = t if out is None else out + t
    return out


def _times(a: Any, b: Any) -> Any:
    """a * b, or None (zero) when either is None."""
    return None if a is None or b is None else a * b


# -- matmul -------------------------------------------------------------------------------------
def _matmul_shape(s: list[Shape], attrs: dict) -> Shape:
    x, w = s
    if len(x) != 2 or len(w) != 2:
        raise GraphError(f"matmul needs 2-D operands, got {_fmt(x)} and {_fmt(w)}")
    if x[1] != w[1]:
        raise GraphError(
            f"matmul: input has {x[1]} features but the weight expects {w[1]} "
            f"(shapes {_fmt(x)} and {_fmt(w)})"
        )
    return (x[0], w[0])


def _matmul_vjp(g, ins, out, attrs, needs):
    x, w = ins
    return [g @ w if needs[0] else None, g.T @ x if needs[1] else None]


def _matmul_jvp(dins, ins, out, attrs):
    (dx, dw), (x, w) = dins, ins
    return _plus(None if dx is None else dx @ w.T, None if dw is None else x @ dw.T)


def _matmul_vjp_jvp(g, dg, ins, dins, out, dout, attrs, needs):
    (x, w), (dx, dw) = ins, dins
    dgx = _plus(None if dg is None else dg @ w, None if dw is None else g @ dw)
    dgw = _plus(None if dg is None else dg.T @ x, None if dx is None else g.T @ dx)
    return [dgx if needs[0] else None, dgw if needs[1] else None]


register(
    OpDef(
        "matmul",
        2,
        _matmul_shape,
        forward=lambda ins, a: ins[0] @ ins[1].T,
        vjp=_matmul_vjp,
        flops=lambda s, o: (2 * s[0][0] * s[0][1] * o[1], 4 * s[0][0] * s[0][1] * o[1]),
        saves=("in0", "in1"),
        jvp=_matmul_jvp,
        vjp_jvp=_matmul_vjp_jvp,
        tangent_saves=("in0", "in1"),
        kernels=Kernels(
            forward=Call("matmul_nt", ("in0", "in1", "out")),
            weight_grads=(Call("matmul_tn", ("d_out", "in0", "d_in1", "beta")),),
            input_grads=(Call("matmul_nn", ("d_out", "in1", "d_in0")),),
        ),
    )
)


# -- bias_add -----------------------------------------------------------------------------------
# the elementwise op right after a bias_add -> the one kernel running both (each activation adds
# its own when it registers)
_AFTER_BIAS: dict[str, Call] = {}


def _bias_shape(s: list[Shape], attrs: dict) -> Shape:
    m, b = s
    if len(m) != 2 or len(b) != 1 or m[1] != b[0]:
        raise GraphError(f"bias_add needs (B, n) and (n,), got {_fmt(m)} and {_fmt(b)}")
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
        flops=lambda s, o: (_numel(o), _numel(o)),
        saves=(),
        jvp=lambda dins, ins, out, a: _plus(*dins),
        vjp_jvp=lambda g, dg, ins, dins, out, dout, a, needs: [
            dg if needs[0] else None,
            None if dg is None or not needs[1] else dg.sum(axis=0),
        ],
        kernels=Kernels(
            forward=Call("bias_add", ("in0", "in1", "out")),
            weight_grads=(Call("sum_rows", ("d_out", "d_in1", "accumulate")),),
            fuses=MappingProxyType(_AFTER_BIAS),
            in_place=True,  # dm = dz: one buffer, no kernel
        ),
    )
)


# -- activations (VJP from the output, so only h is cached) --------------------------------------
def _same_shape(s: list[Shape], attrs: dict) -> Shape:
    return s[0]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


_ACT_FWD: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda z: z.copy(),
    "relu": lambda z: np.maximum(z, 0),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
}
_ACT_DERIV: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda h: np.ones_like(h),
    "relu": lambda h: (h > 0).astype(h.dtype),
    "sigmoid": lambda h: h * (1 - h),
    "tanh": lambda h: 1 - h * h,
}
# d phi'(z) / dh, written in h: phi'' dz = (d phi'/dh) dh, so the tangent rule needs only h, dh
_ACT_DERIV2: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
    "identity": None,  # phi'' = 0: no tangent kept
    "relu": None,  # phi'' = 0 away from the kink
    "sigmoid": lambda h: 1 - 2 * h,
    "tanh": lambda h: -2 * h,
}
_ACT_FLOPS = {"identity": 0, "relu": 1, "sigmoid": 4, "tanh": 4}


def _act_vjp_jvp(d, d2):
    def rule(g, dg, ins, dins, out, dout, a, needs):
        first = None if dg is None else dg * d(out)
        second = None if d2 is None or dout is None else g * d2(out) * dout
        return [_plus(first, second)]

    return rule


for _act in ACT_CODE:
    register(
        OpDef(
            _act,
            1,
            _same_shape,
            forward=(lambda f: lambda ins, a: f(ins[0]))(_ACT_FWD[_act]),
            vjp=(lambda d: lambda g, ins, out, a, needs: [g * d(out)])(_ACT_DERIV[_act]),
            flops=(lambda c: lambda s, o: (c * _numel(o), (c + 1) * _numel(o)))(_ACT_FLOPS[_act]),
            saves=("out",),
            jvp=(lambda d: lambda dins, ins, out, a: _times(dins[0], d(out)))(_ACT_DERIV[_act]),
            vjp_jvp=_act_vjp_jvp(_ACT_DERIV[_act], _ACT_DERIV2[_act]),
            tangent_saves=("out",) if _ACT_DERIV2[_act] is not None else (),
            kernels=Kernels(
                forward=Call("act_forward", ("in0", "out", "code")),
                input_grads=(Call("act_backward", ("d_out", "out", "d_in0", "code")),),
                in_place=True,
                code=ACT_CODE[_act],
            ),
        )
    )
    _AFTER_BIAS[_act] = Call("bias_act_forward", ("in0", "in1", "out", "next.out", "next.code"))


# -- gelu: tanh approximation, 0.5 z (1 + tanh u), u = c (z + a z^3), written z sigmoid(2u) (no
# cancellation); its derivative needs z (not h, which is not monotonic in z), so z is cached
_GELU_C, _GELU_A = math.sqrt(2.0 / math.pi), 0.044715


def _gelu_parts(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s = sigmoid(2u) (stable for large |u|) and du/dz."""
    u = _GELU_C * (z + _GELU_A * z * z * z)
    e = np.exp(-2 * np.abs(u))
    return np.where(u >= 0, 1 / (1 + e), e / (1 + e)), _GELU_C * (1 + 3 * _GELU_A * z * z)


def _gelu_d(z: np.ndarray) -> np.ndarray:
    s, du = _gelu_parts(z)
    return s + 2 * z * s * (1 - s) * du


def _gelu_d2(z: np.ndarray) -> np.ndarray:
    s, du = _gelu_parts(z)
    return (
        2 * s * (1 - s) * (2 * du + 2 * z * (1 - 2 * s) * du * du + 6 * _GELU_A * _GELU_C * z * z)
    )


def _gelu_vjp_jvp(g, dg, ins, dins, out, dout, a, needs):
    (z,), (dz,) = ins, dins
    first = None if dg is None else dg * _gelu_d(z)
    return [_plus(first, None if dz is None else g * _gelu_d2(z) * dz)]


register(
    OpDef(
        "gelu",
        1,
        _same_shape,
        forward=lambda ins, a: ins[0] * _gelu_parts(ins[0])[0],
        vjp=lambda g, ins, out, a, needs: [g * _gelu_d(ins[0])],
        flops=lambda s, o: (10 * _numel(o), 14 * _numel(o)),
        saves=("in0",),
        jvp=lambda dins, ins, out, a: _times(dins[0], _gelu_d(ins[0])),
        vjp_jvp=_gelu_vjp_jvp,
        tangent_saves=("in0",),
        kernels=Kernels(
            forward=Call("gelu_forward", ("in0", "out")),
            input_grads=(Call("gelu_backward", ("d_out", "in0", "d_in0")),),
            in_place=True,
        ),
    )
)
_AFTER_BIAS["gelu"] = Call("bias_gelu_forward", ("in0", "in1", "out", "next.out"))


# -- losses -------------------------------------------------------------------------------------
def _xent_shape(s: list[Shape], attrs: dict) -> Shape:
    o, y = s
    if len(o) != 2 or len(y) != 1 or o[0] != y[0]:
        raise GraphError(
            f"cross_entropy needs logits (B, q) and labels (B,), got {_fmt(o)} and {_fmt(y)}"
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
    return [_plus(first, second), None]


register(
    OpDef(
        "cross_entropy",
        2,
        _xent_shape,
        _xent_forward,
        _xent_vjp,
        flops=lambda s, o: (5 * _numel(s[0]), 2 * _numel(s[0])),
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
)


def _mse_shape(s: list[Shape], attrs: dict) -> Shape:
    o, y = s
    if tuple(o) != tuple(y) or len(o) != 2:
        raise GraphError(
            f"mse needs outputs and targets of the same (B, q) shape, got {_fmt(o)} and {_fmt(y)}"
        )
    return ()


def _mse_jvp(dins, ins, out, a):
    d = _plus(dins[0], None if dins[1] is None else -dins[1])
    if d is None:
        return None
    return a.get("scale", 1.0 / len(ins[0])) * float(((ins[0] - ins[1]) * d).sum())


def _mse_vjp_jvp(g, dg, ins, dins, out, dout, a, needs):
    scale = a.get("scale", 1.0 / len(ins[0]))
    d = _plus(dins[0], None if dins[1] is None else -dins[1])
    first = None if dg is None else dg * scale * (ins[0] - ins[1])
    return [_plus(first, None if d is None else g * scale * d), None]


register(
    OpDef(
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
        flops=lambda s, o: (3 * _numel(s[0]), 2 * _numel(s[0])),
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
)


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
        _plus(None if dg is None else dg * lam * w, None if d is None else g * lam * d)
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
        flops=lambda s, o: (2 * sum(_numel(x) for x in s), 2 * sum(_numel(x) for x in s)),
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
        raise GraphError(f"add needs operands of one shape, got {', '.join(map(_fmt, s))}")
    return s[0]


register(
    OpDef(
        "add",
        None,
        _add_shape,
        forward=lambda ins, a: sum(ins[1:], ins[0]),
        vjp=lambda g, ins, out, a, needs: [g if n else None for n in needs],
        flops=lambda s, o: ((len(s) - 1) * _numel(o), 0),
        saves=(),
        kind="scalar",
        jvp=lambda dins, ins, out, a: _plus(*dins),
        vjp_jvp=lambda g, dg, ins, dins, out, dout, a, needs: [dg if n else None for n in needs],
    )
)
