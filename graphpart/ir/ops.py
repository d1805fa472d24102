"""The op registry: per op its shape rule, reference forward, VJP, FLOPs and saved tensors.

Every op is declared once, here. The forward and VJP rules are plain NumPy and serve as the
reference (the oracle); device backends (workers/backends.py) supply faster kernels that
must agree with them. Conventions, batch-major (x is B x d, a weight W is out x in):

    matmul     z = x W^T                      dx = dz W,  dW = dz^T x
    bias_add   z = m + b                      dm = dz,    db = sum_rows(dz)
    relu, sigmoid, tanh, identity: h = phi(z) dz = dh * phi'(z), computed from the output h
    cross_entropy  L = scale * sum_i -log softmax(o_i)[y_i]        dL/do = scale (p - onehot y)
    mse            L = scale * sum_i 1/2 ||o_i - y_i||^2          dL/do = scale (o - y)
    l2         s = lambda/2 sum_W ||W||_F^2   ds/dW = lambda W
    add        J = L + s                      dL = dJ, ds = dJ

`scale` is 1/N for a batch of N samples; a pipeline runs each micro-batch with scale = 1/N of
the whole batch, so summed micro-batch gradients equal the whole-batch gradient.

`saves` names what the VJP reads: "in0", "in1", ... (inputs by position) and "out". The memory
model counts the saved tensors that are not parameters as cached activations, and the reference
autodiff hands the VJP only the saved tensors, so a wrong declaration fails the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphpart.errors import GraphError

Shape = tuple[Any, ...]
ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh")
LOSSES = ("cross_entropy", "mse")


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


register(
    OpDef(
        "matmul",
        2,
        _matmul_shape,
        forward=lambda ins, a: ins[0] @ ins[1].T,
        vjp=_matmul_vjp,
        flops=lambda s, o: (2 * s[0][0] * s[0][1] * o[1], 4 * s[0][0] * s[0][1] * o[1]),
        saves=("in0", "in1"),
    )
)


# -- bias_add -----------------------------------------------------------------------------------
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
_ACT_FLOPS = {"identity": 0, "relu": 1, "sigmoid": 4, "tanh": 4}

for _act in ACTIVATIONS:
    register(
        OpDef(
            _act,
            1,
            _same_shape,
            forward=(lambda f: lambda ins, a: f(ins[0]))(_ACT_FWD[_act]),
            vjp=(lambda d: lambda g, ins, out, a, needs: [g * d(out)])(_ACT_DERIV[_act]),
            flops=(lambda c: lambda s, o: (c * _numel(o), (c + 1) * _numel(o)))(_ACT_FLOPS[_act]),
            saves=("out",),
        )
    )


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
    )
)


def _mse_shape(s: list[Shape], attrs: dict) -> Shape:
    o, y = s
    if tuple(o) != tuple(y) or len(o) != 2:
        raise GraphError(
            f"mse needs outputs and targets of the same (B, q) shape, got {_fmt(o)} and {_fmt(y)}"
        )
    return ()


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
    )
)


# -- regulariser and sum ------------------------------------------------------------------------
def _l2_shape(s: list[Shape], attrs: dict) -> Shape:
    lam = attrs.get("weight_decay", 0.0)
    if not (isinstance(lam, int | float) and lam >= 0 and np.isfinite(lam)):
        raise GraphError(f"l2: weight_decay={lam!r}; must be a finite number >= 0")
    return ()


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
    )
)
