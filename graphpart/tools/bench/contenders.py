"""The contenders: graphpart's engine, the same MLP written in plain NumPy, and PyTorch's step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from graphpart.engines import Engine
from graphpart.ir import mlp
from graphpart.optim import make_optimizer
from graphpart.params import init_params
from graphpart.plan.partition import partition

SIZES = (784, 1024, 1024, 10)
# SGD is measured with momentum (a state buffer per parameter, as people train with it).
OPTIMIZER_KW: dict[str, dict[str, float]] = {
    "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    "sgd": {"lr": 0.01, "momentum": 0.9},
}
CONTENDERS = ("graphpart", "numpy", "torch")


def make_graphpart(
    params: Mapping[str, np.ndarray],
    sizes: Sequence[int],
    batch: int,
    activation: str,
    bias: bool,
    optimizer: str,
) -> Any:
    """graphpart's in-process engine on one stage, with a copy of `params`."""
    g = mlp(list(sizes), activation=activation, bias=bias, loss="cross_entropy", weight_decay=0.0)
    return Engine(
        partition(g, 1),
        {k: v.copy() for k, v in params.items()},
        make_optimizer(optimizer, **OPTIMIZER_KW[optimizer]),
        microbatches=1,
        schedule="1f1b",
        max_rows=batch,
        keep_events=False,
    )


def init_mlp_params(
    sizes: Sequence[int], activation: str, bias: bool, dtype: str, seed: int = 0
) -> dict[str, np.ndarray]:
    """graphpart's own initial parameters for the MLP (W1, b1, ..., by name)."""
    g = mlp(list(sizes), activation=activation, bias=bias, loss="cross_entropy")
    return init_params(g, seed, dtype)


def _act(xp: Any, z: Any, activation: str) -> Any:
    if activation == "relu":
        return xp.maximum(z, 0)
    if activation == "sigmoid":
        return 1 / (1 + xp.exp(-z))
    if activation == "tanh":
        return xp.tanh(z)
    return z


def _act_grad(dh: Any, h: Any, activation: str) -> Any:
    """dz from dh and the activation's output h."""
    if activation == "relu":
        return dh * (h > 0)
    if activation == "sigmoid":
        return dh * (h * (1 - h))
    if activation == "tanh":
        return dh * (1 - h * h)
    return dh


class NumpyMLP:
    """The same network, loss and optimizer written as plain, clean NumPy (the baseline).

    Softmax cross-entropy averaged over the batch; Adam and SGD with PyTorch's update rules
    (the ones graphpart's kernels implement). Parameters are named as graphpart names them.
    The array module `xp` is NumPy's by default; the GPU check passes CuPy's (cuBLAS), where
    the loss stays a 0-d device array until read, so that a step does not synchronise.
    """

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        activation: str,
        bias: bool,
        optimizer: str,
        xp: Any = np,
        **opt_kw: float,
    ) -> None:
        self.xp = xp
        self.p = {k: xp.asarray(np.array(v)) for k, v in params.items()}
        self.layers = sum(1 for k in self.p if k.startswith("W"))
        self.activation = activation
        self.bias = bias
        self.optimizer = optimizer
        self.hp = {**OPTIMIZER_KW[optimizer], **opt_kw}
        slots = 2 if optimizer == "adam" else (1 if self.hp.get("momentum") else 0)
        self.state = {k: [xp.zeros_like(v) for _ in range(slots)] for k, v in self.p.items()}
        self.t = 0

    def loss_and_grads(
        self, x: Any, y: Any, phases: dict[str, float] | None = None
    ) -> tuple[Any, dict]:
        """The loss (a 0-d array of `xp`) and the gradients by name."""
        t0 = time.perf_counter()
        xp, p, n, act = self.xp, self.p, self.layers, self.activation
        hs = [x]
        z = x
        for i in range(1, n + 1):
            z = hs[-1] @ p[f"W{i}"].T
            if self.bias:
                z += p[f"b{i}"]
            if i < n:
                hs.append(_act(xp, z, act))
        rows = xp.arange(len(x))
        zmax = z.max(axis=1, keepdims=True)
        e = xp.exp(z - zmax)
        s = e.sum(axis=1, keepdims=True)
        loss = xp.mean(xp.log(s[:, 0]) + zmax[:, 0] - z[rows, y])
        t1 = time.perf_counter()
        g = e / s  # dL/do = (softmax - onehot) / B
        g[rows, y] -= 1
        g /= len(x)
        grads: dict[str, Any] = {}
        for i in range(n, 0, -1):
            grads[f"W{i}"] = g.T @ hs[i - 1]
            if self.bias:
                grads[f"b{i}"] = g.sum(axis=0)
            if i > 1:
                g = _act_grad(g @ p[f"W{i}"], hs[i - 1], act)
        if phases is not None:
            phases["forward"] = t1 - t0
            phases["backward"] = time.perf_counter() - t1
        return loss, grads

    def update(self, grads: Mapping[str, Any]) -> None:
        self.t += 1
        hp = self.hp
        for k, w in self.p.items():
            g = grads[k]
            if self.optimizer == "adam":
                b1, b2 = hp["beta1"], hp["beta2"]
                m, v = self.state[k]
                m *= b1
                m += (1 - b1) * g
                v *= b2
                v += (1 - b2) * (g * g)
                denom = self.xp.sqrt(v) / math.sqrt(1 - b2**self.t) + hp["eps"]
                w -= hp["lr"] / (1 - b1**self.t) * m / denom
            elif self.state[k]:  # SGD with momentum
                buf = self.state[k][0]
                buf *= hp["momentum"]
                buf += g
                w -= hp["lr"] * buf
            else:
                w -= hp["lr"] * g

    def step(self, x: Any, y: Any, phases: dict[str, float] | None = None) -> Any:
        """One training step; the loss before it (a 0-d array of `xp`: float() reads it)."""
        loss, grads = self.loss_and_grads(x, y, phases)
        t = time.perf_counter()
        self.update(grads)
        if phases is not None:
            phases["update"] = time.perf_counter() - t
        return loss


def torch_model(
    torch: Any,
    params: Mapping[str, np.ndarray],
    sizes: Sequence[int],
    activation: str = "relu",
    bias: bool = True,
    optimizer: str = "adam",
    device: str = "cpu",
) -> tuple[Any, Any]:
    """(model, optimizer): the same MLP in PyTorch on `device`, from `params`, with torch's
    fastest optimizer: fused=True, one kernel per tensor on the CPU and on CUDA (Adam 3-4x
    faster than the default for-each one on the CPU at this size; docs/benchmarks.md, "The
    peers")."""
    acts = {
        "relu": torch.nn.ReLU,
        "sigmoid": torch.nn.Sigmoid,
        "tanh": torch.nn.Tanh,
        "identity": torch.nn.Identity,
    }
    n = len(sizes) - 1
    dtype = torch.from_numpy(np.asarray(params["W1"])[:1]).dtype
    layers: list[Any] = []
    with torch.no_grad():
        for i in range(1, n + 1):
            lin = torch.nn.Linear(sizes[i - 1], sizes[i], bias=bias, dtype=dtype)
            lin.weight.copy_(torch.from_numpy(np.asarray(params[f"W{i}"])))
            if bias:
                lin.bias.copy_(torch.from_numpy(np.asarray(params[f"b{i}"])))
            layers.append(lin)
            if i < n:
                layers.append(acts[activation]())
    model = torch.nn.Sequential(*layers).to(device)
    hp = OPTIMIZER_KW[optimizer]
    if optimizer == "adam":
        opt: Any = torch.optim.Adam(
            model.parameters(),
            lr=hp["lr"],
            betas=(hp["beta1"], hp["beta2"]),
            eps=hp["eps"],
            fused=True,
        )
    else:
        opt = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp["momentum"], fused=True)
    return model, opt


def torch_step(torch: Any, model: Any, opt: Any, x: Any, y: Any) -> Callable[[], None]:
    """One PyTorch training step of `model` on tensors (x, y), as torch's docs write it."""
    crit = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        crit(model(x), y).backward()
        opt.step()

    return step


def make_torch_step(
    params: Mapping[str, np.ndarray],
    sizes: Sequence[int],
    activation: str,
    bias: bool,
    optimizer: str,
    x: np.ndarray,
    y: np.ndarray,
) -> tuple[Callable[[], None], Any] | None:
    """(step, model): a PyTorch (CPU) training step of the same model on (x, y), starting
    from `params`; None when torch is not importable."""
    try:
        import torch
    except ImportError:
        return None
    model, opt = torch_model(torch, params, sizes, activation, bias, optimizer)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    return torch_step(torch, model, opt, xt, yt), model
