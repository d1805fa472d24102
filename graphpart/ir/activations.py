"""The activations' declarations: identity, relu, sigmoid and tanh (differentiated from their
output) and gelu (from its input), each with the kernel it fuses into after a bias_add."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from graphpart.ir.calls import Call, Kernels
from graphpart.ir.opdef import OpDef, Shape, numel, plus, times

# The codes the shared elementwise kernels (act_forward, bias_act_forward, act_backward) branch on.
ACT_CODE: dict[str, int] = {"identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}


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
        return [plus(first, second)]

    return rule


def _elementwise(act: str) -> OpDef:
    """The declaration of an activation computed and differentiated from its output h."""
    return OpDef(
        act,
        1,
        _same_shape,
        forward=(lambda f: lambda ins, a: f(ins[0]))(_ACT_FWD[act]),
        vjp=(lambda d: lambda g, ins, out, a, needs: [g * d(out)])(_ACT_DERIV[act]),
        flops=(lambda c: lambda s, o: (c * numel(o), (c + 1) * numel(o)))(_ACT_FLOPS[act]),
        saves=("out",),
        jvp=(lambda d: lambda dins, ins, out, a: times(dins[0], d(out)))(_ACT_DERIV[act]),
        vjp_jvp=_act_vjp_jvp(_ACT_DERIV[act], _ACT_DERIV2[act]),
        tangent_saves=("out",) if _ACT_DERIV2[act] is not None else (),
        kernels=Kernels(
            forward=Call("act_forward", ("in0", "out", "code")),
            input_grads=(Call("act_backward", ("d_out", "out", "d_in0", "code")),),
            in_place=True,
            code=ACT_CODE[act],
        ),
    )


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
    return [plus(first, None if dz is None else g * _gelu_d2(z) * dz)]


GELU = OpDef(
    "gelu",
    1,
    _same_shape,
    forward=lambda ins, a: ins[0] * _gelu_parts(ins[0])[0],
    vjp=lambda g, ins, out, a, needs: [g * _gelu_d(ins[0])],
    flops=lambda s, o: (10 * numel(o), 14 * numel(o)),
    saves=("in0",),
    jvp=lambda dins, ins, out, a: times(dins[0], _gelu_d(ins[0])),
    vjp_jvp=_gelu_vjp_jvp,
    tangent_saves=("in0",),
    kernels=Kernels(
        forward=Call("gelu_forward", ("in0", "out")),
        input_grads=(Call("gelu_backward", ("d_out", "in0", "d_in0")),),
        in_place=True,
    ),
)


DEFS: tuple[OpDef, ...] = (*(_elementwise(act) for act in ACT_CODE), GELU)

# the activation right after a bias_add -> the one kernel running both
AFTER_BIAS: dict[str, Call] = {
    **{
        act: Call("bias_act_forward", ("in0", "in1", "out", "next.out", "next.code"))
        for act in ACT_CODE
    },
    "gelu": Call("bias_gelu_forward", ("in0", "in1", "out", "next.out")),
}
