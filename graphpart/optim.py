"""Optimizers: SGD with momentum and Adam, as records plus a NumPy reference update.

The records say how many state buffers each parameter needs (the memory model reads this);
the reference update is the oracle for the kernels in workers/kernels (PyTorch semantics).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from graphpart.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class SGD:
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0  # usually 0: graphpart puts l2 in the graph (node s)

    name = "sgd"

    @property
    def state_slots(self) -> int:
        return 1 if self.momentum else 0


@dataclass(frozen=True)
class Adam:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    name = "adam"
    state_slots = 2


Optimizer = SGD | Adam


def make_optimizer(name: str, **kw: float) -> Optimizer:
    """An optimizer record by name; keys it does not use are ignored."""
    if name == "sgd":
        keys = ("lr", "momentum", "weight_decay")
        opt: Optimizer = SGD(**{k: float(v) for k, v in kw.items() if k in keys})
    elif name == "adam":
        keys = ("lr", "beta1", "beta2", "eps", "weight_decay")
        opt = Adam(**{k: float(v) for k, v in kw.items() if k in keys})
    else:
        raise ConfigError(f"optimizer={name!r}; valid: {', '.join(OPTIMIZERS)}")
    if not opt.lr > 0:
        raise ConfigError(f"lr={opt.lr}: must be > 0")
    return opt


def init_state(opt: Optimizer, params: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    return {k: [np.zeros_like(v) for _ in range(opt.state_slots)] for k, v in params.items()}


def reference_step(
    opt: Optimizer,
    params: dict[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    state: dict[str, list[np.ndarray]],
    step: int,
) -> None:
    """Update `params` and `state` in place; `step` counts from 1."""
    for k, w in params.items():
        g = grads[k] + opt.weight_decay * w if opt.weight_decay else grads[k]
        if isinstance(opt, SGD):
            if opt.momentum:
                v = state[k][0]
                v *= opt.momentum
                v += g
                g = v
            w -= opt.lr * g
        else:
            m, v = state[k]
            m[...] = opt.beta1 * m + (1 - opt.beta1) * g
            v[...] = opt.beta2 * v + (1 - opt.beta2) * g * g
            mhat = m / (1 - opt.beta1**step)
            vhat = v / (1 - opt.beta2**step)
            w -= opt.lr * mhat / (np.sqrt(vhat) + opt.eps)
