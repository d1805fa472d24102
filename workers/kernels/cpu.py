"""The CPU kernel table: serial, disk-cached Numba kernels and BLAS products, into given outputs.

Conventions shared by every kernel:

* Matrices are C-contiguous 2-D float32 or float64 arrays of one dtype; vectors are 1-D.
  Labels are int64 of shape (B,). Arithmetic runs in the array dtype; the scalar results
  (losses, norms) are accumulated in float64.
* Kernels never allocate: they write into the `out` arrays the caller passes. Where an
  argument "may alias" another, the same array may be passed for both.
* The optimizer kernels (`sgd_update`, `adam_update`, `accumulate`) are 1-D: callers pass
  `.reshape(-1)` views of contiguous parameters, which update the parameters in place.
* Everything is `nogil=True` and serial (one worker is pinned to one core), and `cache=True`
  (compiled code is reused across processes; NUMBA_CACHE_DIR, if set, chooses where).
* `KERNELS` is the table the op registry's kernel keys (graphpart.ir.ops, `kernels`) index;
  the matrix products there go through BLAS (`workers.kernels.blas`: NumPy's OpenBLAS, or
  MKL where it is installed and measured faster at the product's shape).
* exp/tanh/sigmoid are evaluated with branch-free polynomial code (Cephes coefficients, about
  1-2 ulp) so that the loops vectorise; libm calls would not. NaN propagates; overflow gives
  inf and underflow 0 as in NumPy (float32 denormals included).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from graphpart.ir.ops import ACT_CODE
from workers.kernels import blas

__all__ = [
    "ACTIVATIONS",
    "IDENTITY",
    "KERNELS",
    "RELU",
    "SIGMOID",
    "TANH",
    "accumulate",
    "act_backward",
    "act_forward",
    "adam_update",
    "axpy",
    "bias_act_forward",
    "bias_add",
    "bias_gelu_forward",
    "gelu_backward",
    "gelu_forward",
    "matmul_nn",
    "matmul_nt",
    "matmul_tn",
    "mse_backward",
    "mse_forward",
    "sgd_update",
    "softmax_xent_backward",
    "softmax_xent_forward",
    "sq_norm",
    "sum_rows",
    "weight_decay",
]

# The activation codes are graphpart.ir.ops.ACT_CODE's; the names are what kernels branch on.
IDENTITY = ACT_CODE["identity"]
RELU = ACT_CODE["relu"]
SIGMOID = ACT_CODE["sigmoid"]
TANH = ACT_CODE["tanh"]
ACTIVATIONS: dict[str, int] = dict(ACT_CODE)

_KW = {"cache": True, "nogil": True, "error_model": "numpy"}  # x / 0 -> inf, as NumPy
# Elementwise kernels may contract a*b+c into FMA; reductions may also reorder their sums so
# that they vectorise. Neither assumes finite values, so NaN and inf keep NumPy semantics.
_FM = {"contract"}
_FM_SUM = {"contract", "reassoc"}


# --- vectorisable scalar math --------------------------------------------------------------


@intrinsic
def _bits_f32(typingctx, n):
    """Reinterpret an int32 as float32."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _bits_f64(typingctx, n):
    """Reinterpret an int64 as float64."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(error_model="numpy")
def _exp32(x):
    hi = np.float32(88.72283)  # exp(hi) < FLT_MAX < exp(next float32 above hi)
    lo = np.float32(-103.97209)  # below this exp rounds to 0 (smallest denormal / 2)
    xn = x if x < hi else hi  # clamped, NaN -> hi: keeps the exponent arithmetic defined
    xn = xn if xn > lo else lo
    fn = np.floor(xn * np.float32(1.442695040888963) + np.float32(0.5))
    r = x - fn * np.float32(0.693359375)  # Cody-Waite: ln 2 = C1 + C2 (C1 has few bits)
    r = r - fn * np.float32(-2.12194440e-4)
    y = np.float32(1.9875691500e-4)
    y = y * r + np.float32(1.3981999507e-3)
    y = y * r + np.float32(8.3334519073e-3)
    y = y * r + np.float32(4.1665795894e-2)
    y = y * r + np.float32(1.6666665459e-1)
    y = y * r + np.float32(5.0000001201e-1)
    y = y * (r * r) + r + np.float32(1.0)
    n = np.int32(fn)
    n1 = n >> np.int32(1)  # 2^n as 2^n1 * 2^n2, both normal, so n may reach -150 or 128
    y = y * _bits_f32((n1 + np.int32(127)) << np.int32(23))
    y = y * _bits_f32((n - n1 + np.int32(127)) << np.int32(23))
    y = y if not x < lo else np.float32(0.0)
    return y if not x > hi else np.float32(np.inf)


@njit(error_model="numpy")
def _exp64(x):
    hi = 709.782712893384
    lo = -745.1332191019412
    xn = x if x < hi else hi
    xn = xn if xn > lo else lo
    fn = np.floor(xn * 1.4426950408889634 + 0.5)
    r = x - fn * 6.93145751953125e-1
    r = r - fn * 1.42860682030941723212e-6
    rr = r * r
    p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 1.0)
    q = (
        (3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
        + 2.27265548208155028766e-1
    ) * rr + 2.0
    y = 1.0 + 2.0 * (p / (q - p))
    n = np.int64(np.int32(fn))  # via int32: AVX2 has no vector double -> int64
    n1 = n >> np.int64(1)
    y = y * _bits_f64((n1 + np.int64(1023)) << np.int64(52))
    y = y * _bits_f64((n - n1 + np.int64(1023)) << np.int64(52))
    y = y if not x < lo else 0.0
    return y if not x > hi else np.inf


@njit(error_model="numpy")
def _select(cond, a, b):
    """a if cond else b (a call LLVM inlines; keeps conditional expressions out of IR-inlined
    code, where nested inlining trips a Numba SSA check)."""
    return a if cond else b


def _tanh32(x):
    a = abs(x)
    z = x * x
    s = (np.float32(-5.70498872745e-3) * z + np.float32(2.06390887954e-2)) * z
    s = ((s - np.float32(5.37397155531e-2)) * z + np.float32(1.33314422036e-1)) * z
    small = (s - np.float32(3.33332819422e-1)) * z * x + x
    big = np.float32(1.0) - np.float32(2.0) / (_exp32(a + a) + np.float32(1.0))
    return math.copysign(_select(a < np.float32(0.625), small, big), x)  # also tanh(-0) = -0


def _tanh64(x):
    a = abs(x)
    z = x * x
    p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
    p = p - 1.61468768441708447952e3
    q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
    q = q + 4.84406305325125486048e3
    small = x + x * z * (p / q)
    big = 1.0 - 2.0 / (_exp64(a + a) + 1.0)
    return math.copysign(_select(a < 0.625, small, big), x)


def _vexp(x):
    """exp(x) of a float32/float64 scalar inside a kernel (compiled through the overload)."""
    raise NotImplementedError


def _vtanh(x):
    """tanh(x) of a float32/float64 scalar inside a kernel (compiled through the overload)."""
    raise NotImplementedError


@overload(_vexp, jit_options={"error_model": "numpy"})
def _vexp_impl(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    if x == types.float64:
        return lambda x: _exp64(x)
    return None


@overload(_vtanh, inline="always", jit_options={"error_model": "numpy"})
def _vtanh_impl(x):
    # Inlined into the caller's IR: as separate functions (holding an inlined exp) these are
    # past LLVM's inlining threshold, and a call in the loop stops vectorisation.
    if x == types.float32:
        return _tanh32
    if x == types.float64:
        return _tanh64
    return None


@njit(inline="always")
def _check_act(act):
    if act < IDENTITY or act > TANH:
        raise ValueError("unknown activation code (valid: 0 identity, 1 relu, 2 sigmoid, 3 tanh)")


@njit(inline="always")
def _same(a, b):
    """Whether two arrays start at the same address (the supported aliasing case).

    Kernels branch on this and pass the one array twice, so that LLVM sees the alias and
    vectorises the in-place loop instead of falling back to its scalar overlap path.
    """
    return a.ctypes.data == b.ctypes.data


# --- layer kernels -------------------------------------------------------------------------


@njit(inline="always")
def _bias_add(m, b, out):
    rows, cols = m.shape
    for i in range(rows):
        for j in range(cols):
            out[i, j] = m[i, j] + b[j]


@njit(fastmath=_FM, **_KW)
def bias_add(m: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out[i, j] = m[i, j] + b[j]. out may alias m."""
    if _same(m, out):
        _bias_add(m, b, m)
    else:
        _bias_add(m, b, out)


@njit(inline="always")
def _act_forward(z, out, act):
    rows, cols = z.shape
    zero = z.dtype.type(0.0)
    one = z.dtype.type(1.0)
    for i in range(rows):
        if act == IDENTITY:
            for j in range(cols):
                out[i, j] = z[i, j]
        elif act == RELU:
            for j in range(cols):
                v = z[i, j]
                out[i, j] = v if not v < zero else zero
        elif act == SIGMOID:
            for j in range(cols):
                out[i, j] = one / (one + _vexp(-z[i, j]))
        else:
            for j in range(cols):
                out[i, j] = _vtanh(z[i, j])


@njit(fastmath=_FM, **_KW)
def act_forward(z: np.ndarray, out: np.ndarray, act: int) -> None:
    """out = phi_act(z) elementwise. out should not alias z: that is correct but not vectorised
    (the layers keep z for the backward pass, so it has no in-place fast path)."""
    _check_act(act)
    _act_forward(z, out, act)


@njit(inline="always")
def _bias_act_forward(m, b, z_out, h_out, act):
    rows, cols = m.shape
    zero = m.dtype.type(0.0)
    one = m.dtype.type(1.0)
    for i in range(rows):
        if act == IDENTITY:
            for j in range(cols):
                v = m[i, j] + b[j]
                z_out[i, j] = v
                h_out[i, j] = v
        elif act == RELU:
            for j in range(cols):
                v = m[i, j] + b[j]
                z_out[i, j] = v
                h_out[i, j] = v if not v < zero else zero
        elif act == SIGMOID:
            for j in range(cols):
                v = m[i, j] + b[j]
                z_out[i, j] = v
                h_out[i, j] = one / (one + _vexp(-v))
        else:
            for j in range(cols):
                v = m[i, j] + b[j]
                z_out[i, j] = v
                h_out[i, j] = _vtanh(v)


@njit(fastmath=_FM, **_KW)
def bias_act_forward(
    m: np.ndarray, b: np.ndarray, z_out: np.ndarray, h_out: np.ndarray, act: int
) -> None:
    """Fused z = m + b (into z_out, which may alias m) and h = phi_act(z) (into h_out)."""
    _check_act(act)
    if _same(m, z_out):
        _bias_act_forward(m, b, m, h_out, act)
    else:
        _bias_act_forward(m, b, z_out, h_out, act)


@njit(inline="always")
def _act_backward(dh, h, out, act):
    rows, cols = dh.shape
    zero = dh.dtype.type(0.0)
    one = dh.dtype.type(1.0)
    for i in range(rows):
        if act == IDENTITY:
            for j in range(cols):
                out[i, j] = dh[i, j]
        elif act == RELU:
            for j in range(cols):
                out[i, j] = dh[i, j] if h[i, j] > zero else zero
        elif act == SIGMOID:
            for j in range(cols):
                v = h[i, j]
                out[i, j] = dh[i, j] * (v * (one - v))
        else:
            for j in range(cols):
                v = h[i, j]
                out[i, j] = dh[i, j] * (one - v * v)


@njit(fastmath=_FM, **_KW)
def act_backward(dh: np.ndarray, h: np.ndarray, out: np.ndarray, act: int) -> None:
    """out = dh * phi_act'(z), from the output h = phi(z). out may alias dh.

    relu: h > 0 (a select: 0 where h <= 0 even if dh is inf/NaN); sigmoid: h (1 - h);
    tanh: 1 - h^2; identity: 1.
    """
    _check_act(act)
    if _same(dh, out):
        if act != IDENTITY:
            _act_backward(dh, h, dh, act)
    else:
        _act_backward(dh, h, out, act)


# --- losses --------------------------------------------------------------------------------


@njit(fastmath=_FM_SUM, **_KW)
def _row_max(a, i):
    """max_j a[i, j] (NaN-blind: a NaN in the row still reaches the loss through exp)."""
    mx = a[i, 0]
    for j in range(1, a.shape[1]):
        v = a[i, j]
        mx = v if v > mx else mx
    return mx


@njit(fastmath=_FM_SUM, **_KW)
def _row_sum64(a, i):
    """sum_j a[i, j], accumulated in float64."""
    s = 0.0
    for j in range(a.shape[1]):
        s += np.float64(a[i, j])
    return s


@njit(inline="always")
def _softmax_xent_forward(o, y, scale, probs_out):
    rows, cols = o.shape
    total = 0.0
    for i in range(rows):
        label = y[i]
        if label < 0 or label >= cols:
            raise ValueError("label out of range [0, number of classes)")
        target = np.float64(o[i, label])
        mx = _row_max(o, i)
        for j in range(cols):
            probs_out[i, j] = _vexp(o[i, j] - mx)
        s = _row_sum64(probs_out, i)
        inv = o.dtype.type(1.0 / s)
        for j in range(cols):
            probs_out[i, j] *= inv
        total += np.float64(mx) + math.log(s) - target
    return scale * total


@njit(fastmath=_FM, **_KW)
def softmax_xent_forward(
    o: np.ndarray, y: np.ndarray, scale: float, probs_out: np.ndarray
) -> float:
    """probs_out = softmax(o) row-wise; returns scale * sum_i (logsumexp(o_i) - o_i[y_i]).

    o is (B, C), y int64 (B,) with labels in [0, C). probs_out may alias o. The loss is
    accumulated in float64. A label out of range raises ValueError.
    """
    if _same(o, probs_out):
        return _softmax_xent_forward(o, y, scale, o)
    return _softmax_xent_forward(o, y, scale, probs_out)


@njit(inline="always")
def _softmax_xent_backward(probs, y, scale, do_out):
    rows, cols = probs.shape
    sc = probs.dtype.type(scale)
    for i in range(rows):
        label = y[i]
        if label < 0 or label >= cols:
            raise ValueError("label out of range [0, number of classes)")
        target = probs[i, label]
        for j in range(cols):
            do_out[i, j] = sc * probs[i, j]
        do_out[i, label] = sc * (target - probs.dtype.type(1.0))


@njit(fastmath=_FM, **_KW)
def softmax_xent_backward(
    probs: np.ndarray, y: np.ndarray, scale: float, do_out: np.ndarray
) -> None:
    """do_out = scale * (probs - onehot(y)). do_out may alias probs."""
    if _same(probs, do_out):
        _softmax_xent_backward(probs, y, scale, probs)
    else:
        _softmax_xent_backward(probs, y, scale, do_out)


@njit(fastmath=_FM_SUM, **_KW)
def mse_forward(o: np.ndarray, t: np.ndarray, scale: float) -> float:
    """scale * sum 0.5 (o - t)^2 over all elements, accumulated in float64."""
    rows, cols = o.shape
    total = 0.0
    for i in range(rows):
        for j in range(cols):
            d = np.float64(o[i, j]) - np.float64(t[i, j])
            total += d * d
    return scale * 0.5 * total


@njit(inline="always")
def _mse_backward(o, t, scale, do_out):
    rows, cols = o.shape
    sc = o.dtype.type(scale)
    for i in range(rows):
        for j in range(cols):
            do_out[i, j] = sc * (o[i, j] - t[i, j])


@njit(fastmath=_FM, **_KW)
def mse_backward(o: np.ndarray, t: np.ndarray, scale: float, do_out: np.ndarray) -> None:
    """do_out = scale * (o - t). do_out may alias o or t."""
    if _same(o, do_out):
        _mse_backward(o, t, scale, o)
    elif _same(t, do_out):
        _mse_backward(o, t, scale, t)
    else:
        _mse_backward(o, t, scale, do_out)


# --- reductions ----------------------------------------------------------------------------


@njit(fastmath=_FM, **_KW)
def sum_rows(g: np.ndarray, out: np.ndarray, accumulate: bool = False) -> None:
    """out[j] = sum_i g[i, j] in the array dtype (bias gradient); accumulate=True adds to out."""
    rows, cols = g.shape
    if not accumulate:
        for j in range(cols):
            out[j] = g.dtype.type(0.0)
    for i in range(rows):
        for j in range(cols):
            out[j] += g[i, j]


@njit(fastmath=_FM_SUM, **_KW)
def sq_norm(w: np.ndarray) -> float:
    """Sum of squares of a 1-D or 2-D contiguous array, accumulated in float64."""
    flat = w.reshape(-1)
    total = 0.0
    for k in range(flat.size):
        v = np.float64(flat[k])
        total += v * v
    return total


# --- optimizers (1-D: pass .reshape(-1) views) ---------------------------------------------


@njit(fastmath=_FM, **_KW)
def accumulate(dst: np.ndarray, src: np.ndarray) -> None:
    """dst += src (1-D)."""
    for k in range(dst.size):
        dst[k] += src[k]


@njit(fastmath=_FM, **_KW)
def axpy(dst: np.ndarray, src: np.ndarray, a: float, accumulate: bool) -> None:
    """dst = a * src, or dst += a * src when `accumulate` (1-D): the regulariser's lambda W."""
    a_ = dst.dtype.type(a)
    if accumulate:
        for k in range(dst.size):
            dst[k] += a_ * src[k]
    else:
        for k in range(dst.size):
            dst[k] = a_ * src[k]


@njit(fastmath=_FM, **_KW)
def sgd_update(
    w: np.ndarray, g: np.ndarray, v: np.ndarray, lr: float, momentum: float, weight_decay: float
) -> None:
    """torch.optim.SGD step (dampening 0, no Nesterov), in place on 1-D views.

    d = g + weight_decay * w; if momentum != 0: v = momentum * v + d, d = v; w -= lr * d.
    v (zeros before the first step) is not read or written when momentum == 0.
    """
    dt = w.dtype.type
    lr_, mom, wd = dt(lr), dt(momentum), dt(weight_decay)
    if momentum != 0.0:
        for k in range(w.size):
            vk = mom * v[k] + (g[k] + wd * w[k])
            v[k] = vk
            w[k] -= lr_ * vk
    else:
        for k in range(w.size):
            w[k] -= lr_ * (g[k] + wd * w[k])


@njit(fastmath=_FM, **_KW)
def adam_update(
    w: np.ndarray,
    g: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    weight_decay: float,
) -> None:
    """torch.optim.Adam step (L2 weight decay, no amsgrad), in place on 1-D views.

    step counts from 1 (the first update). m and v start at zero.
    """
    if step < 1:
        raise ValueError("adam step counts from 1")
    dt = w.dtype.type
    step_size = dt(lr / (1.0 - beta1**step))
    inv_bc2_sqrt = dt(1.0 / math.sqrt(1.0 - beta2**step))
    b1, b2, eps_, wd = dt(beta1), dt(beta2), dt(eps), dt(weight_decay)
    c1, c2 = dt(1.0 - beta1), dt(1.0 - beta2)  # rounded once, like torch's `value=1 - beta`
    for k in range(w.size):
        gk = g[k] + wd * w[k]
        mk = b1 * m[k] + c1 * gk
        vk = b2 * v[k] + c2 * gk * gk
        m[k] = mk
        v[k] = vk
        w[k] -= step_size * mk / (np.sqrt(vk) * inv_bc2_sqrt + eps_)


def weight_decay(w: np.ndarray, g: np.ndarray, lam: float, accumulate: bool) -> float:
    """The regulariser's part for one weight: g = lam * w (g += lam * w when `accumulate`);
    returns lam/2 ||w||^2 (float64)."""
    s = 0.5 * lam * float(sq_norm(w.reshape(-1)))
    axpy(g.reshape(-1), w.reshape(-1), lam, accumulate)
    return s


# --- matrix products (BLAS) ----------------------------------------------------------------


def matmul_nt(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b.T (the forward z = x W^T)."""
    blas.gemm("nt", a, b, out)


def matmul_nn(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b (the input gradient dx = dz W)."""
    blas.gemm("nn", a, b, out)


def matmul_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray, beta: float = 0.0) -> None:
    """out = a.T @ b + beta * out. beta=1 accumulates a weight gradient in the gemm itself
    (BLAS's C = alpha AB + beta C), so no temporary is written and added afterwards."""
    blas.gemm("tn", a, b, out, beta)


# --- gelu (tanh approximation, written v sigmoid(2u), u = c (v + a v^3): graphpart.ir.ops) --

_GELU_2C = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


@njit(inline="always")
def _gelu(v, one, c2, a):
    return v / (one + _vexp(-c2 * (v + a * v * v * v)))


@njit(fastmath=_FM, **_KW)
def gelu_forward(z: np.ndarray, out: np.ndarray) -> None:
    """out = gelu(z) elementwise (out should not alias z, which the layer keeps for backward)."""
    rows, cols = z.shape
    one, c2, a = z.dtype.type(1.0), z.dtype.type(_GELU_2C), z.dtype.type(_GELU_A)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = _gelu(z[i, j], one, c2, a)


@njit(inline="always")
def _bias_gelu_forward(m, b, z_out, h_out):
    rows, cols = m.shape
    one, c2, a = m.dtype.type(1.0), m.dtype.type(_GELU_2C), m.dtype.type(_GELU_A)
    for i in range(rows):
        for j in range(cols):
            v = m[i, j] + b[j]
            z_out[i, j] = v
            h_out[i, j] = _gelu(v, one, c2, a)


@njit(fastmath=_FM, **_KW)
def bias_gelu_forward(m: np.ndarray, b: np.ndarray, z_out: np.ndarray, h_out: np.ndarray) -> None:
    """Fused z = m + b (into z_out, which may alias m) and h = gelu(z) (into h_out)."""
    if _same(m, z_out):
        _bias_gelu_forward(m, b, m, h_out)
    else:
        _bias_gelu_forward(m, b, z_out, h_out)


@njit(inline="always")
def _gelu_backward(dh, z, out):
    rows, cols = dh.shape
    one, two = dh.dtype.type(1.0), dh.dtype.type(2.0)
    c2, a = dh.dtype.type(_GELU_2C), dh.dtype.type(_GELU_A)
    c, a3 = dh.dtype.type(0.5 * _GELU_2C), dh.dtype.type(3.0 * _GELU_A)
    for i in range(rows):
        for j in range(cols):
            v = z[i, j]
            s = one / (one + _vexp(-c2 * (v + a * v * v * v)))
            out[i, j] = dh[i, j] * (s + two * v * s * (one - s) * (c * (one + a3 * v * v)))


@njit(fastmath=_FM, **_KW)
def gelu_backward(dh: np.ndarray, z: np.ndarray, out: np.ndarray) -> None:
    """out = dh * gelu'(z), from the input z (gelu is not monotonic: h does not give z back).
    out may alias dh."""
    if _same(dh, out):
        _gelu_backward(dh, z, dh)
    else:
        _gelu_backward(dh, z, out)


# --- the table -----------------------------------------------------------------------------

# kernel key (graphpart.ir.ops: OpDef.kernels) -> implementation
KERNELS: dict[str, Callable[..., float | None]] = {
    "matmul_nt": matmul_nt,
    "matmul_nn": matmul_nn,
    "matmul_tn": matmul_tn,
    "bias_add": bias_add,
    "sum_rows": sum_rows,
    "act_forward": act_forward,
    "bias_act_forward": bias_act_forward,
    "act_backward": act_backward,
    "gelu_forward": gelu_forward,
    "bias_gelu_forward": bias_gelu_forward,
    "gelu_backward": gelu_backward,
    "softmax_xent_forward": softmax_xent_forward,
    "softmax_xent_backward": softmax_xent_backward,
    "mse_forward": mse_forward,
    "mse_backward": mse_backward,
    "weight_decay": weight_decay,
}
