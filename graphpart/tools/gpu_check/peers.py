"""The peers a GPU step is measured against: the same MLP step in CuPy (cuBLAS) or PyTorch CUDA.

`XpMLP` is the step written once over an array module (`xp`): NumPy here, so the tests check
it against the CPU benchmark's NumPy step, CuPy on a GPU. Adam with bias, softmax
cross-entropy averaged over the batch, torch's update rule, as graphpart's kernels do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from graphpart.tools.bench.contenders import OPTIMIZER_KW


class XpMLP:
    """An MLP (relu hidden layers, bias) trained by Adam, on the arrays of module `xp`."""

    def __init__(self, xp: Any, params: Mapping[str, np.ndarray]) -> None:
        self.xp = xp
        self.p = {k: xp.asarray(np.array(v)) for k, v in params.items()}
        self.layers = sum(1 for k in self.p if k.startswith("W"))
        self.m = {k: xp.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: xp.zeros_like(v) for k, v in self.p.items()}
        self.t = 0
        self.hp = OPTIMIZER_KW["adam"]

    def step(self, x: Any, y: Any) -> Any:
        """One training step on device arrays x (B x d) and y (B labels); the loss as a
        0-d device array (reading it synchronises)."""
        xp, p, n = self.xp, self.p, self.layers
        hs = [x]
        z = x
        for i in range(1, n + 1):
            z = hs[-1] @ p[f"W{i}"].T
            z += p[f"b{i}"]
            if i < n:
                hs.append(xp.maximum(z, 0))
        rows = xp.arange(x.shape[0])
        zmax = z.max(axis=1, keepdims=True)
        e = xp.exp(z - zmax)
        s = e.sum(axis=1, keepdims=True)
        loss = xp.mean(xp.log(s[:, 0]) + zmax[:, 0] - z[rows, y])
        g = e / s
        g[rows, y] -= 1
        g /= x.shape[0]
        grads = {}
        for i in range(n, 0, -1):
            grads[f"W{i}"] = g.T @ hs[i - 1]
            grads[f"b{i}"] = g.sum(axis=0)
            if i > 1:
                g = (g @ p[f"W{i}"]) * (hs[i - 1] > 0)
        self._adam(grads)
        return loss

    def _adam(self, grads: Mapping[str, Any]) -> None:
        self.t += 1
        b1, b2, eps, lr = self.hp["beta1"], self.hp["beta2"], self.hp["eps"], self.hp["lr"]
        for k, w in self.p.items():
            g, m, v = grads[k], self.m[k], self.v[k]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            w -= lr / (1 - b1**self.t) * m / (self.xp.sqrt(v) / math.sqrt(1 - b2**self.t) + eps)


def torch_step(
    torch: Any, params: Mapping[str, np.ndarray], sizes: Sequence[int], x: Any, y: Any, device: str
) -> tuple[Callable[[], None], Any]:
    """(step, model): a PyTorch training step of the same MLP on `device` (x, y already
    there), from `params`."""
    n = len(sizes) - 1
    layers: list[Any] = []
    dtype = torch.from_numpy(np.asarray(params["W1"])[:1]).dtype
    with torch.no_grad():
        for i in range(1, n + 1):
            lin = torch.nn.Linear(sizes[i - 1], sizes[i], dtype=dtype)
            lin.weight.copy_(torch.from_numpy(np.asarray(params[f"W{i}"])))
            lin.bias.copy_(torch.from_numpy(np.asarray(params[f"b{i}"])))
            layers.append(lin)
            if i < n:
                layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(device)
    hp = OPTIMIZER_KW["adam"]
    opt = torch.optim.Adam(
        model.parameters(), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"]
    )
    crit = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        crit(model(x), y).backward()
        opt.step()

    return step, model
