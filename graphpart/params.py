"""Parameter initialisation, reproducible by seed whatever the partition."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from graphpart.ir.graph import Graph

DTYPES = ("float32", "float64")  # the floating-point types parameters and data may take


def init_params(graph: Graph, seed: int = 0, dtype: str | np.dtype = "float32") -> dict:
    """He-normal weights for relu, Glorot-normal otherwise; zero biases.

    Each parameter draws from its own generator, seeded by (seed, crc32(name)), so a
    parameter's initial value does not depend on which stage holds it or on the others.

    >>> from graphpart.ir import mlp
    >>> params = init_params(mlp([64, 32, 10], bias=True), seed=0, dtype="float64")
    >>> {name: p.shape for name, p in params.items()}
    {'W1': (32, 64), 'b1': (32,), 'W2': (10, 32), 'b2': (10,)}
    >>> params["W1"].dtype, float(params["b1"].max())
    (dtype('float64'), 0.0)
    """
    dtype = np.dtype(dtype)
    act = graph.get_info("activation", "relu")
    out = {}
    for v in graph.params:
        rng = np.random.default_rng([int(seed), zlib.crc32(v.name.encode())])
        if len(v.shape) == 2:
            fan_out, fan_in = v.shape
            std = np.sqrt(2.0 / fan_in) if act == "relu" else np.sqrt(2.0 / (fan_in + fan_out))
            w = rng.standard_normal(v.shape)
            w *= std  # in place: one float64 temporary, not two (a worker's start-up peak)
            out[v.name] = w.astype(dtype)
        else:
            out[v.name] = np.zeros(v.shape, dtype)
    return out


@dataclass(frozen=True)
class Init:
    """Parameters still to be made: each worker makes its own stage's from (seed, dtype).

    Passing this instead of arrays means no parameter crosses the network at start-up, and
    the values are those of init_params on the whole graph, since each parameter's draw
    depends only on its name.
    """

    seed: int = 0
    dtype: str = "float32"


Params = Mapping[str, np.ndarray] | Init


def params_dtype(params: Params) -> np.dtype:
    """The dtype the parameters are (or an Init will make them) in."""
    if isinstance(params, Init):
        return np.dtype(params.dtype)
    return np.asarray(next(iter(params.values()))).dtype


def stage_params(graph: Graph, params: Params) -> dict[str, np.ndarray] | Init:
    """The part of `params` that `graph` (a stage's sub-graph) holds; an Init passes through."""
    if isinstance(params, Init):
        return params
    return {v.name: params[v.name] for v in graph.params}


def materialize(graph: Graph, params: Params) -> dict[str, np.ndarray]:
    return (
        init_params(graph, params.seed, params.dtype) if isinstance(params, Init) else dict(params)
    )
