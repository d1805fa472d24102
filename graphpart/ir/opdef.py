"""An op's declaration (OpDef: shape rule, reference forward, VJP, JVP, FLOPs, saves, kernels)
and the helpers the declarations share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphpart.ir.calls import Kernels

Shape = tuple[Any, ...]


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
    # of the backward FLOPs, those of the weight gradients: a split backward's W (the rest is I)
    weight_flops: Callable[[list[tuple[int, ...]], tuple[int, ...]], int] = lambda s, o: 0

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


def numel(shape: Sequence[int]) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def fmt(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def plus(*terms: Any) -> Any:
    """The sum of the terms that are not None (None stands for a zero tangent); None if all are."""
    out = None
    for t in terms:
        if t is not None:
            out = t if out is None else out + t
    return out


def times(a: Any, b: Any) -> Any:
    """a * b, or None (zero) when either is None."""
    return None if a is None or b is None else a * b
