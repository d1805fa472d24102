"""The CUDA kernel table: Numba CUDA kernels and their host launch wrappers; imports without a GPU.

The wrappers mirror workers.kernels.cpu (same names, argument order and semantics) but take
device arrays (numba DeviceNDArray, C-contiguous, one float dtype) and launch on `stream`
(0: the default stream). Reductions write per-row or per-block float64 partial sums into a
caller-owned device buffer and return their host-side sum, which synchronises. Nothing is
compiled at import: `cuda.jit` compiles each kernel on its first launch, so this module imports
on machines without a GPU (and runs under NUMBA_ENABLE_CUDASIM=1, the simulator).

The three products of an MLP layer (batch-major, W is out x in) are matmul_nt (z = x W^T),
matmul_nn (dx = dz W) and matmul_tn (dW = dz^T x), all one register-tiled shared-memory
kernel (`gemm`). `KERNELS` is the table the op registry's kernel keys index, with the CPU
table's signatures except that the keys in `REDUCTIONS` take a trailing float64 device buffer
(the backend supplies it; REDUCTIONS says how many entries the call needs).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
from numba import cuda, float64, from_dtype, types

from workers.kernels.cpu import ACTIVATIONS, IDENTITY, RELU, SIGMOID, TANH

if TYPE_CHECKING:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray as Dev

__all__ = [
    "ACTIVATIONS",
    "BLOCK_2D",
    "GEMM_MIN_BLOCKS",
    "GEMM_REG",
    "IDENTITY",
    "KERNELS",
    "REDUCTIONS",
    "RELU",
    "SIGMOID",
    "TANH",
    "THREADS",
    "TILE",
    "accumulate",
    "act_backward",
    "act_forward",
    "adam_update",
    "available",
    "axpy",
    "bias_act_forward",
    "bias_add",
    "bias_gelu_forward",
    "compile_ptx",
    "gemm",
    "gelu_backward",
    "gelu_forward",
    "gemm_reg",
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

# Launch constants. Kernels read them when they compile (on first launch): change them before
# that. The gemm kernel is compiled per (TILE, GEMM_REG) pair, so those two may change at any
# time (the tests shrink them to exercise several blocks and panels on small matrices).
TILE = 16  # a gemm block is TILE x TILE threads; also the depth of its k panels
GEMM_REG = 8  # the most outputs per gemm thread and axis: a block then computes a 128-square
GEMM_MIN_BLOCKS = 256  # ... halved (down to 1) while c would take fewer blocks than this
BLOCK_2D = (32, 8)  # elementwise blocks: x runs along a row (coalesced), y over rows
THREADS = 256  # 1-D blocks; also the largest block of the per-row reductions (a power of 2)


def available() -> bool:
    """Whether kernels can launch here: a CUDA GPU with a driver, or the simulator."""
    return bool(cuda.is_available())


# --- device functions ----------------------------------------------------------------------


@cuda.jit(device=True)
def _phi(v, act, zero, one):
    if act == RELU:
        return v if not v < zero else zero
    if act == SIGMOID:
        e = math.exp(-abs(v))  # never overflows; 1 - sigmoid(|v|) = e / (1 + e)
        s = one / (one + e)
        return s if not v < zero else e * s
    if act == TANH:
        return math.tanh(v)
    return v


# gelu, tanh approximation written v sigmoid(2u), u = c (v + a v^3) (graphpart.ir.ops)
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


@cuda.jit(device=True)
def _gelu_s(v, zero, one, c2, a):
    """sigmoid(2u) in v's dtype (c2 = 2c and a in it too), from exp(-|2u|): never overflows."""
    t = c2 * (v + a * v * v * v)
    e = math.exp(-abs(t))
    s = one / (one + e)
    return s if not t < zero else e * s


@cuda.jit(device=True)
def _block_max(sh, tid, n):
    """Max of sh[:n] (n a power of 2) across the block; every thread gets it (NaN-blind)."""
    cuda.syncthreads()
    s = n // 2
    while s > 0:
        if tid < s:
            other = sh[tid + s]
            if other > sh[tid]:
                sh[tid] = other
        cuda.syncthreads()
        s //= 2
    return sh[0]


@cuda.jit(device=True)
def _block_sum(sh, tid, n):
    """Sum of sh[:n] (n a power of 2) across the block; every thread gets it."""
    cuda.syncthreads()
    s = n // 2
    while s > 0:
        if tid < s:
            sh[tid] += sh[tid + s]
        cuda.syncthreads()
        s //= 2
    return sh[0]


# --- kernels -------------------------------------------------------------------------------


@cuda.jit
def _bias_add_k(m, b, out):
    j, i = cuda.grid(2)
    if i < m.shape[0] and j < m.shape[1]:
        out[i, j] = m[i, j] + b[j]


@cuda.jit
def _act_forward_k(z, out, act):
    j, i = cuda.grid(2)
    if i < z.shape[0] and j < z.shape[1]:
        out[i, j] = _phi(z[i, j], act, z.dtype.type(0.0), z.dtype.type(1.0))


@cuda.jit
def _bias_act_forward_k(m, b, z_out, h_out, act):
    j, i = cuda.grid(2)
    if i < m.shape[0] and j < m.shape[1]:
        v = m[i, j] + b[j]
        z_out[i, j] = v
        h_out[i, j] = _phi(v, act, m.dtype.type(0.0), m.dtype.type(1.0))


@cuda.jit
def _act_backward_k(dh, h, out, act):
    j, i = cuda.grid(2)
    if i < dh.shape[0] and j < dh.shape[1]:
        zero = dh.dtype.type(0.0)
        one = dh.dtype.type(1.0)
        g = dh[i, j]
        v = h[i, j]
        if act == RELU:
            out[i, j] = g if v > zero else zero
        elif act == SIGMOID:
            out[i, j] = g * (v * (one - v))
        elif act == TANH:
            out[i, j] = g * (one - v * v)
        else:
            out[i, j] = g


@cuda.jit
def _gelu_forward_k(z, out):
    j, i = cuda.grid(2)
    if i < z.shape[0] and j < z.shape[1]:
        v = z[i, j]
        dt = z.dtype.type
        out[i, j] = v * _gelu_s(v, dt(0.0), dt(1.0), dt(2.0 * _GELU_C), dt(_GELU_A))


@cuda.jit
def _bias_gelu_forward_k(m, b, z_out, h_out):
    j, i = cuda.grid(2)
    if i < m.shape[0] and j < m.shape[1]:
        v = m[i, j] + b[j]
        z_out[i, j] = v
        dt = m.dtype.type
        h_out[i, j] = v * _gelu_s(v, dt(0.0), dt(1.0), dt(2.0 * _GELU_C), dt(_GELU_A))


@cuda.jit
def _gelu_backward_k(dh, z, out):
    j, i = cuda.grid(2)
    if i < dh.shape[0] and j < dh.shape[1]:
        dt = dh.dtype.type
        one, two = dt(1.0), dt(2.0)
        v = z[i, j]
        s = _gelu_s(v, dt(0.0), one, dt(2.0 * _GELU_C), dt(_GELU_A))
        du = dt(_GELU_C) * (one + dt(3.0 * _GELU_A) * v * v)
        out[i, j] = dh[i, j] * (s + two * v * s * (one - s) * du)


@cuda.jit
def _softmax_xent_forward_k(o, y, scale, probs_out, loss_buf):
    """One block per row; per-row loss (float64) into loss_buf, NaN for a bad label."""
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    cols = o.shape[1]
    sh_max = cuda.shared.array(THREADS, float64)
    sh_sum = cuda.shared.array(THREADS, float64)
    label = y[row]
    ok = label >= 0 and label < cols
    target = 0.0
    if tid == 0 and ok:
        target = float64(o[row, label])  # read before probs_out (maybe o) is written
    mx = -math.inf
    for j in range(tid, cols, nt):
        v = float64(o[row, j])
        if v > mx:
            mx = v
    sh_max[tid] = mx
    mx = _block_max(sh_max, tid, nt)
    mxt = o.dtype.type(mx)
    s = 0.0
    for j in range(tid, cols, nt):
        e = math.exp(o[row, j] - mxt)
        probs_out[row, j] = e
        s += float64(e)
    sh_sum[tid] = s
    s = _block_sum(sh_sum, tid, nt)
    inv = o.dtype.type(1.0 / s)
    for j in range(tid, cols, nt):
        probs_out[row, j] *= inv
    if tid == 0:
        loss_buf[row] = scale * (mx + math.log(s) - target) if ok else math.nan


@cuda.jit
def _softmax_xent_backward_k(probs, y, scale, do_out):
    j, i = cuda.grid(2)
    if i < probs.shape[0] and j < probs.shape[1]:
        p = probs[i, j]
        if j == y[i]:
            p -= probs.dtype.type(1.0)
        do_out[i, j] = scale * p


@cuda.jit
def _mse_forward_k(o, t, scale, loss_buf):
    """One block per row; 0.5 * scale * sum_j (o - t)^2 (float64) into loss_buf[row]."""
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    sh = cuda.shared.array(THREADS, float64)
    s = 0.0
    for j in range(tid, o.shape[1], nt):
        d = float64(o[row, j]) - float64(t[row, j])
        s += d * d
    sh[tid] = s
    s = _block_sum(sh, tid, nt)
    if tid == 0:
        loss_buf[row] = 0.5 * scale * s


@cuda.jit
def _mse_backward_k(o, t, scale, do_out):
    j, i = cuda.grid(2)
    if i < o.shape[0] and j < o.shape[1]:
        do_out[i, j] = scale * (o[i, j] - t[i, j])


@cuda.jit
def _sum_rows_k(g, out, accumulate):
    j = cuda.grid(1)
    if j < g.shape[1]:
        acc = out[j] if accumulate else g.dtype.type(0.0)
        for i in range(g.shape[0]):
            acc += g[i, j]
        out[j] = acc


@cuda.jit
def _sq_norm_k(w, partial):
    """Grid-stride sum of squares of 1-D w; one float64 partial per block."""
    tid = cuda.threadIdx.x
    sh = cuda.shared.array(THREADS, float64)
    s = 0.0
    for k in range(cuda.grid(1), w.size, cuda.gridsize(1)):
        v = float64(w[k])
        s += v * v
    sh[tid] = s
    s = _block_sum(sh, tid, cuda.blockDim.x)
    if tid == 0:
        partial[cuda.blockIdx.x] = s


@cuda.jit
def _accumulate_k(dst, src):
    k = cuda.grid(1)
    if k < dst.size:
        dst[k] += src[k]


@cuda.jit
def _axpy_k(dst, src, a, accumulate):
    k = cuda.grid(1)
    if k < dst.size:
        if accumulate:
            dst[k] += a * src[k]
        else:
            dst[k] = a * src[k]


@cuda.jit
def _sgd_update_k(w, g, v, lr, momentum, weight_decay):
    k = cuda.grid(1)
    if k < w.size:
        d = g[k] + weight_decay * w[k]
        if momentum != 0:
            d = momentum * v[k] + d
            v[k] = d
        w[k] -= lr * d


@cuda.jit
def _adam_update_k(w, g, m, v, step_size, beta1, beta2, c1, c2, inv_bc2_sqrt, eps, wd):
    k = cuda.grid(1)
    if k < w.size:
        gk = g[k] + wd * w[k]
        mk = beta1 * m[k] + c1 * gk
        vk = beta2 * v[k] + c2 * gk * gk
        m[k] = mk
        v[k] = vk
        w[k] -= step_size * mk / (math.sqrt(vk) * inv_bc2_sqrt + eps)


@functools.cache
def _gemm_kernel(trans_a: bool, trans_b: bool, dtype: np.dtype, tile: int, reg: int):
    """Register-tiled kernel for c = alpha op(a) op(b) + beta c, specialised on the transposes.

    A block of tile x tile threads computes a (tile * reg)-square block of c; each thread
    reg x reg entries of it, strided by `tile` (thread (ty, tx) owns rows r0 + ty + i * tile
    and columns c0 + tx + j * tile), accumulated in registers. Per step along k the block
    stages a (tile * reg) x tile panel of op(a) and a tile x (tile * reg) panel of op(b) in
    shared memory, k-major, each thread loading `reg` entries of each panel, read along the
    stored array's rows (coalesced).
    """
    nbtype = from_dtype(dtype)
    T, R = int(tile), int(reg)
    BM = T * R  # rows (and columns) of c per block
    PAD = BM + 1  # k-major panels are BM + 1 wide: the transposed stores spread over banks
    NT = T * T

    @cuda.jit
    def gemm_k(a, b, c, alpha, beta):
        sa = cuda.shared.array((T, PAD), nbtype)  # sa[k, r] = op(a)[r0 + r, k0 + k]
        sb = cuda.shared.array((T, PAD), nbtype)  # sb[k, q] = op(b)[k0 + k, c0 + q]
        acc = cuda.local.array((R, R), nbtype)
        ar = cuda.local.array(R, nbtype)
        br = cuda.local.array(R, nbtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * T + tx
        r0 = cuda.blockIdx.y * BM
        c0 = cuda.blockIdx.x * BM
        rows = c.shape[0]
        cols = c.shape[1]
        kdim = a.shape[0] if trans_a else a.shape[1]
        zero = c.dtype.type(0.0)
        for i in range(R):
            for j in range(R):
                acc[i, j] = zero
        for k0 in range(0, kdim, T):
            for lo in range(R):
                e = tid + lo * NT
                if trans_a:  # a is k x m: consecutive threads read along m
                    kk, rr = e // BM, e % BM
                    gk, gr = k0 + kk, r0 + rr
                    sa[kk, rr] = a[gk, gr] if gk < kdim and gr < rows else zero
                else:  # a is m x k: along k
                    rr, kk = e // T, e % T
                    gk, gr = k0 + kk, r0 + rr
                    sa[kk, rr] = a[gr, gk] if gk < kdim and gr < rows else zero
                if trans_b:  # b is n x k: along k
                    qq, kk = e // T, e % T
                    gk, gq = k0 + kk, c0 + qq
                    sb[kk, qq] = b[gq, gk] if gk < kdim and gq < cols else zero
                else:  # b is k x n: along n
                    kk, qq = e // BM, e % BM
                    gk, gq = k0 + kk, c0 + qq
                    sb[kk, qq] = b[gk, gq] if gk < kdim and gq < cols else zero
            cuda.syncthreads()
            for kk in range(T):
                for i in range(R):
                    ar[i] = sa[kk, ty + i * T]
                for j in range(R):
                    br[j] = sb[kk, tx + j * T]
                for i in range(R):
                    for j in range(R):
                        acc[i, j] += ar[i] * br[j]
            cuda.syncthreads()
        for i in range(R):
            r = r0 + ty + i * T
            for j in range(R):
                q = c0 + tx + j * T
                if r < rows and q < cols:
                    if beta == zero:
                        c[r, q] = alpha * acc[i, j]  # c is not read: it may hold garbage or NaN
                    else:
                        c[r, q] = alpha * acc[i, j] + beta * c[r, q]

    return gemm_k


# --- launch helpers ------------------------------------------------------------------------


def gemm_reg(m: int, n: int) -> int:
    """Outputs per thread and axis for an m x n product: GEMM_REG (large tiles, the most
    arithmetic per load), halved while the grid would have fewer than GEMM_MIN_BLOCKS blocks,
    so that a small product (a layer at batch 256) still spreads over every multiprocessor."""
    reg = max(1, GEMM_REG)
    while reg > 1 and -(-m // (TILE * reg)) * -(-n // (TILE * reg)) < GEMM_MIN_BLOCKS:
        reg //= 2
    return reg


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _grid_2d(rows: int, cols: int):
    """BLOCK_2D, shrunk to a power of 2 per axis for small matrices (fewer idle threads)."""
    bx = min(BLOCK_2D[0], _pow2_at_least(cols))
    by = min(BLOCK_2D[0] * BLOCK_2D[1] // bx, _pow2_at_least(rows))
    return (max(1, -(-cols // bx)), max(1, -(-rows // by))), (bx, by)


def _grid_1d(n: int):
    threads = min(THREADS, _pow2_at_least(n))
    return max(1, -(-n // threads)), threads


def _row_threads(cols: int) -> int:
    """Threads of a per-row reduction block: a power of 2 covering cols, at most THREADS."""
    return min(THREADS, _pow2_at_least(cols))


def _host_sum(buf, n: int, stream) -> float:
    host = buf[:n].copy_to_host(stream=stream)
    if stream:
        stream.synchronize()
    return float(np.sum(host, dtype=np.float64))


def _scalar(arr, x):
    """x as a scalar of arr's dtype, so float32 kernels stay in float32."""
    return arr.dtype.type(x)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


# --- wrappers (same names and argument order as workers.kernels.cpu) -----------------------


def bias_add(m: Dev, b: Dev, out: Dev, stream=0) -> None:
    """out[i, j] = m[i, j] + b[j]. out may alias m."""
    grid, block = _grid_2d(*m.shape)
    _bias_add_k[grid, block, stream](m, b, out)


def act_forward(z: Dev, out: Dev, act: int, stream=0) -> None:
    """out = phi_act(z) elementwise (out may alias z)."""
    _check(IDENTITY <= act <= TANH, f"unknown activation code {act}")
    grid, block = _grid_2d(*z.shape)
    _act_forward_k[grid, block, stream](z, out, act)


def bias_act_forward(m: Dev, b: Dev, z_out: Dev, h_out: Dev, act: int, stream=0) -> None:
    """Fused z = m + b (into z_out, which may alias m) and h = phi_act(z) (into h_out)."""
    _check(IDENTITY <= act <= TANH, f"unknown activation code {act}")
    grid, block = _grid_2d(*m.shape)
    _bias_act_forward_k[grid, block, stream](m, b, z_out, h_out, act)


def act_backward(dh: Dev, h: Dev, out: Dev, act: int, stream=0) -> None:
    """out = dh * phi_act'(z) from the output h (relu: a select on h > 0). out may alias dh."""
    _check(IDENTITY <= act <= TANH, f"unknown activation code {act}")
    grid, block = _grid_2d(*dh.shape)
    _act_backward_k[grid, block, stream](dh, h, out, act)


def gelu_forward(z: Dev, out: Dev, stream=0) -> None:
    """out = gelu(z) elementwise (tanh approximation, as the CPU kernel)."""
    grid, block = _grid_2d(*z.shape)
    _gelu_forward_k[grid, block, stream](z, out)


def bias_gelu_forward(m: Dev, b: Dev, z_out: Dev, h_out: Dev, stream=0) -> None:
    """Fused z = m + b (into z_out, which may alias m) and h = gelu(z) (into h_out)."""
    grid, block = _grid_2d(*m.shape)
    _bias_gelu_forward_k[grid, block, stream](m, b, z_out, h_out)


def gelu_backward(dh: Dev, z: Dev, out: Dev, stream=0) -> None:
    """out = dh * gelu'(z), from the input z. out may alias dh."""
    grid, block = _grid_2d(*dh.shape)
    _gelu_backward_k[grid, block, stream](dh, z, out)


def softmax_xent_forward(
    o: Dev, y: Dev, scale: float, probs_out: Dev, loss_buf: Dev, stream=0
) -> float:
    """probs_out = softmax(o) row-wise; returns scale * sum_i (logsumexp(o_i) - o_i[y_i]).

    y is an int64 device array of labels; loss_buf a float64 device array of at least B
    entries that receives the per-row losses (NaN for a label outside [0, C)). probs_out may
    alias o. Synchronises to sum the losses on the host.
    """
    rows, cols = o.shape
    _check(loss_buf.shape[0] >= rows, f"loss_buf has {loss_buf.shape[0]} entries, need {rows}")
    if rows == 0:
        return 0.0
    _softmax_xent_forward_k[rows, _row_threads(cols), stream](
        o, y, float(scale), probs_out, loss_buf
    )
    return _host_sum(loss_buf, rows, stream)


def softmax_xent_backward(probs: Dev, y: Dev, scale: float, do_out: Dev, stream=0) -> None:
    """do_out = scale * (probs - onehot(y)). do_out may alias probs."""
    grid, block = _grid_2d(*probs.shape)
    _softmax_xent_backward_k[grid, block, stream](probs, y, _scalar(probs, scale), do_out)


def mse_forward(o: Dev, t: Dev, scale: float, loss_buf: Dev, stream=0) -> float:
    """scale * sum 0.5 (o - t)^2 (float64); per-row sums go to loss_buf (>= B entries)."""
    rows, cols = o.shape
    _check(loss_buf.shape[0] >= rows, f"loss_buf has {loss_buf.shape[0]} entries, need {rows}")
    if rows == 0:
        return 0.0
    _mse_forward_k[rows, _row_threads(cols), stream](o, t, float(scale), loss_buf)
    return _host_sum(loss_buf, rows, stream)


def mse_backward(o: Dev, t: Dev, scale: float, do_out: Dev, stream=0) -> None:
    """do_out = scale * (o - t). do_out may alias o or t."""
    grid, block = _grid_2d(*o.shape)
    _mse_backward_k[grid, block, stream](o, t, _scalar(o, scale), do_out)


def sum_rows(g: Dev, out: Dev, accumulate: bool = False, stream=0) -> None:
    """out[j] = sum_i g[i, j] in the array dtype; accumulate=True adds into out."""
    grid, block = _grid_1d(g.shape[1])
    _sum_rows_k[grid, block, stream](g, out, bool(accumulate))


def sq_norm(w: Dev, partial_buf: Dev, stream=0) -> float:
    """Sum of squares of a contiguous 1-D or 2-D w, accumulated in float64.

    partial_buf is a float64 device array; its length caps the number of blocks launched.
    """
    _check(partial_buf.shape[0] >= 1, "partial_buf must have at least one entry")
    flat = w.reshape(w.size)
    blocks, threads = _grid_1d(w.size)
    blocks = min(blocks, partial_buf.shape[0])
    _sq_norm_k[blocks, threads, stream](flat, partial_buf)
    return _host_sum(partial_buf, blocks, stream)


def accumulate(dst: Dev, src: Dev, stream=0) -> None:
    """dst += src (1-D views)."""
    grid, block = _grid_1d(dst.size)
    _accumulate_k[grid, block, stream](dst, src)


def axpy(dst: Dev, src: Dev, a: float, accumulate: bool, stream=0) -> None:
    """dst = a * src, or dst += a * src when `accumulate` (1-D views)."""
    grid, block = _grid_1d(dst.size)
    _axpy_k[grid, block, stream](dst, src, _scalar(dst, a), bool(accumulate))


def sgd_update(
    w: Dev, g: Dev, v: Dev, lr: float, momentum: float, weight_decay: float, stream=0
) -> None:
    """torch.optim.SGD step on 1-D views, as workers.kernels.cpu.sgd_update."""
    grid, block = _grid_1d(w.size)
    s = functools.partial(_scalar, w)
    _sgd_update_k[grid, block, stream](w, g, v, s(lr), s(momentum), s(weight_decay))


def adam_update(
    w: Dev,
    g: Dev,
    m: Dev,
    v: Dev,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    weight_decay: float,
    stream=0,
) -> None:
    """torch.optim.Adam step on 1-D views (step counts from 1), as the CPU kernel."""
    _check(step >= 1, f"adam step counts from 1, got {step}")
    s = functools.partial(_scalar, w)
    step_size = s(lr / (1.0 - beta1**step))
    inv_bc2_sqrt = s(1.0 / math.sqrt(1.0 - beta2**step))
    grid, block = _grid_1d(w.size)
    _adam_update_k[grid, block, stream](
        w, g, m, v, step_size, s(beta1), s(beta2), s(1.0 - beta1), s(1.0 - beta2),
        inv_bc2_sqrt, s(eps), s(weight_decay),
    )  # fmt: skip


def gemm(
    a: Dev,
    b: Dev,
    out: Dev,
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    beta: float = 0.0,
    stream=0,
) -> None:
    """out = alpha * op(a) @ op(b) + beta * out, op = transpose where asked.

    With beta == 0 out is only written, never read.
    """
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    k2, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    _check(k == k2, f"gemm: inner dimensions differ ({k} vs {k2})")
    _check(tuple(out.shape) == (m, n), f"gemm: out is {tuple(out.shape)}, need {(m, n)}")
    reg = gemm_reg(m, n)
    kernel = _gemm_kernel(bool(trans_a), bool(trans_b), np.dtype(out.dtype), TILE, reg)
    edge = TILE * reg
    grid = (max(1, -(-n // edge)), max(1, -(-m // edge)))
    kernel[grid, (TILE, TILE), stream](a, b, out, _scalar(out, alpha), _scalar(out, beta))


def matmul_nt(a: Dev, b: Dev, out: Dev, alpha: float = 1.0, beta: float = 0.0, stream=0) -> None:
    """out = a @ b.T (the forward z = x W^T)."""
    gemm(a, b, out, False, True, alpha, beta, stream)


def matmul_nn(a: Dev, b: Dev, out: Dev, alpha: float = 1.0, beta: float = 0.0, stream=0) -> None:
    """out = a @ b (the input gradient dx = dz W)."""
    gemm(a, b, out, False, False, alpha, beta, stream)


def matmul_tn(a: Dev, b: Dev, out: Dev, alpha: float = 1.0, beta: float = 0.0, stream=0) -> None:
    """out = a.T @ b (the weight gradient dW = dz^T x; beta=1 accumulates)."""
    gemm(a, b, out, True, False, alpha, beta, stream)


def weight_decay(w: Dev, g: Dev, lam: float, accumulate: bool, partial_buf: Dev, stream=0) -> float:
    """The regulariser's part for one weight: g = lam * w (g += lam * w when `accumulate`);
    returns lam/2 ||w||^2 (float64), as the CPU kernel."""
    s = 0.5 * lam * float(sq_norm(w.reshape(w.size), partial_buf, stream))
    axpy(g.reshape(g.size), w.reshape(w.size), lam, accumulate, stream)
    return s


def _matmul_tn_beta(a: Dev, b: Dev, out: Dev, beta: float = 0.0, stream=0) -> None:
    """matmul_tn with the CPU table's signature (beta fourth): the weight gradient."""
    gemm(a, b, out, True, False, 1.0, beta, stream)


# --- the table -----------------------------------------------------------------------------

# kernel key (graphpart.ir.ops: OpDef.kernels) -> implementation
KERNELS: dict[str, Callable[..., float | None]] = {
    "matmul_nt": matmul_nt,
    "matmul_nn": matmul_nn,
    "matmul_tn": _matmul_tn_beta,
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
# keys whose kernel takes a trailing float64 buffer -> the entries it needs, from the arguments
REDUCTIONS: dict[str, Callable[[tuple], int]] = {
    "softmax_xent_forward": lambda args: args[0].shape[0],
    "mse_forward": lambda args: args[0].shape[0],
    "weight_decay": lambda args: 1,
}


# --- ahead-of-time check -------------------------------------------------------------------


def compile_ptx(
    dtype: np.dtype | type = np.float32, cc: tuple[int, int] = (9, 0)
) -> dict[str, str]:
    """PTX of every kernel for arrays of `dtype`, compiled for compute capability `cc`.

    Needs libNVVM (the CUDA toolkit) but no GPU: a typing or lowering error in any kernel
    shows up here rather than on the first launch on a GPU machine.
    """
    f = from_dtype(np.dtype(dtype))
    mat, vec = f[:, ::1], f[::1]
    lab, f64v = types.int64[::1], float64[::1]
    act, sc = types.int64, float64
    sigs = {
        "bias_add": (_bias_add_k, (mat, vec, mat)),
        "act_forward": (_act_forward_k, (mat, mat, act)),
        "bias_act_forward": (_bias_act_forward_k, (mat, vec, mat, mat, act)),
        "act_backward": (_act_backward_k, (mat, mat, mat, act)),
        "gelu_forward": (_gelu_forward_k, (mat, mat)),
        "bias_gelu_forward": (_bias_gelu_forward_k, (mat, vec, mat, mat)),
        "gelu_backward": (_gelu_backward_k, (mat, mat, mat)),
        "softmax_xent_forward": (_softmax_xent_forward_k, (mat, lab, sc, mat, f64v)),
        "softmax_xent_backward": (_softmax_xent_backward_k, (mat, lab, f, mat)),
        "mse_forward": (_mse_forward_k, (mat, mat, sc, f64v)),
        "mse_backward": (_mse_backward_k, (mat, mat, f, mat)),
        "sum_rows": (_sum_rows_k, (mat, vec, types.boolean)),
        "sq_norm": (_sq_norm_k, (vec, f64v)),
        "accumulate": (_accumulate_k, (vec, vec)),
        "sgd_update": (_sgd_update_k, (vec, vec, vec, f, f, f)),
        "adam_update": (_adam_update_k, (vec, vec, vec, vec) + (f,) * 8),
    }
    regs = sorted({max(1, GEMM_REG) >> s for s in range(max(1, GEMM_REG).bit_length())})
    for ta in (False, True):
        for tb in (False, True):
            for reg in regs:  # every variant gemm_reg may pick
                kern = _gemm_kernel(ta, tb, np.dtype(dtype), TILE, reg)
                name = f"gemm_{'t' if ta else 'n'}{'t' if tb else 'n'}_r{reg}"
                sigs[name] = (kern, (mat, mat, mat, f, f))
    with _device_functions_for(cc):
        return {
            name: cuda.compile_ptx(kern.py_func, sig, cc=cc)[0]
            for name, (kern, sig) in sigs.items()
        }


@contextlib.contextmanager
def _device_functions_for(cc: tuple[int, int]):
    """Numba compiles device functions for the current device; without a GPU, pretend one."""
    if cuda.is_available():
        yield
        return
    from numba.cuda import dispatcher

    original = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    try:
        yield
    finally:
        dispatcher.get_current_device = original
