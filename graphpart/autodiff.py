"""Reverse-mode autodiff over the IR, in one process: the reference every other path must match."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from graphpart.errors import GraphpartError
from graphpart.ir.graph import Graph
from graphpart.ir.ops import get
from graphpart.params import DTYPES

FLOAT_DTYPES = tuple(np.dtype(d) for d in DTYPES)


def check_params(graph: Graph, params: Mapping[str, np.ndarray]) -> np.dtype:
    """Check names, shapes and dtype of `params`; return their common float dtype."""
    want = {v.name: v for v in graph.params}
    missing = sorted(set(want) - set(params))
    extra = sorted(set(params) - set(want))
    if missing or extra:
        raise GraphpartError(
            f"params do not match the graph: missing {missing or 'none'}, unexpected "
            f"{extra or 'none'}; the graph's parameters are {sorted(want)}"
        )
    dtypes = {np.asarray(p).dtype for p in params.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in FLOAT_DTYPES:
        raise GraphpartError(
            f"params have dtypes {sorted(str(d) for d in dtypes)}; use one of float32, float64"
        )
    for name, v in want.items():
        if tuple(np.shape(params[name])) != v.shape:
            raise GraphpartError(
                f"param {name!r} has shape {np.shape(params[name])}, the graph expects {v.shape}"
            )
    return next(iter(dtypes))


def check_batch(graph: Graph, batch: Mapping[str, np.ndarray], dtype: np.dtype) -> dict:
    """Check `batch` ({"x": X, "y": Y}) against the graph; cast inputs to `dtype`."""
    out: dict[str, np.ndarray] = {}
    n = None
    for v in graph.inputs + graph.labels:
        if v.name not in batch:
            raise GraphpartError(
                f"batch has no {v.name!r}; it needs {[u.name for u in graph.inputs + graph.labels]}"
            )
        a = np.asarray(batch[v.name])
        if a.ndim != len(v.shape) or any(
            d != "B" and d != s for d, s in zip(v.shape, a.shape, strict=False)
        ):
            raise GraphpartError(
                f"batch[{v.name!r}] has shape {a.shape}; the graph expects {v.shape} (B = batch)"
            )
        if a.shape[0] == 0:
            raise GraphpartError(f"batch[{v.name!r}] is empty; a batch needs at least one row")
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise GraphpartError(f"batch[{v.name!r}] has {a.shape[0]} rows, other arrays {n}")
        if v.role == "label" and graph.var(v.name).shape == ("B",):
            if not np.issubdtype(a.dtype, np.integer):
                raise GraphpartError(f"batch[{v.name!r}] has dtype {a.dtype}; labels are integers")
            q = _classes(graph, v.name)
            bad = np.flatnonzero((a < 0) | (a >= q))
            if bad.size:
                i = int(bad[0])
                raise GraphpartError(
                    f"batch[{v.name!r}][{i}] = {a[i]} is out of range; labels must be in 0..{q - 1}"
                )
            out[v.name] = a.astype(np.int64, copy=False)
        else:
            out[v.name] = np.ascontiguousarray(a, dtype=dtype)
    return out


def _classes(graph: Graph, label: str) -> int:
    """Number of classes: the width of the logits a label is compared with."""
    for op in graph.ops:
        if label in op.inputs:
            return int(graph.var(op.inputs[0]).shape[-1])
    raise GraphpartError(f"label {label!r} is read by no operator")  # pragma: no cover


def forward(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
    scale: float | None = None,
) -> dict[str, Any]:
    """Every variable's value (inputs, parameters and computed), by name.

    >>> import numpy as np
    >>> from graphpart.ir import mlp
    >>> from graphpart.params import init_params
    >>> g = mlp([4, 3, 2])
    >>> values = forward(g, init_params(g), {"x": np.ones((5, 4)), "y": np.zeros(5, int)})
    >>> sorted(values)
    ['J', 'L', 'W1', 'W2', 'h1', 'o', 's', 'x', 'y', 'z1']
    >>> values["o"].shape, values["o"].dtype, float(values["J"]) > 0
    ((5, 2), dtype('float32'), True)
    """
    dtype = check_params(graph, params)
    values: dict[str, Any] = {**check_batch(graph, batch, dtype), **params}
    n = len(next(iter(values[v.name] for v in graph.inputs)))
    for op in graph.ops:
        opdef = get(op.op)
        attrs = dict(op.attrs)
        if opdef.kind == "loss":
            attrs["scale"] = 1.0 / n if scale is None else scale
        values[op.output] = opdef.forward([values[i] for i in op.inputs], attrs)
    return values


def backward(
    graph: Graph,
    values: Mapping[str, Any],
    seeds: Mapping[str, Any],
    scale: float | None = None,
) -> dict[str, Any]:
    """Cotangents of every variable reachable backwards from `seeds` (name -> cotangent).

    Gradients that meet at a variable are summed. Each VJP sees only the tensors its op
    declares as saved (others are None), so the declarations are checked by use.
    """
    grads: dict[str, Any] = dict(seeds)
    wants = {v.name for v in graph.vars if v.role != "label"}  # inputs too: stage boundaries
    for op in reversed(graph.ops):
        g = grads.get(op.output)
        if g is None:
            continue
        opdef = get(op.op)
        attrs = dict(op.attrs)
        if opdef.kind == "loss":
            attrs["scale"] = 1.0 / len(values[op.inputs[0]]) if scale is None else scale
        keep = set(opdef.saved_inputs(len(op.inputs)))
        ins = [values[name] if i in keep else None for i, name in enumerate(op.inputs)]
        out = values[op.output] if opdef.saves_output else None
        needs = [name in wants for name in op.inputs]
        for name, gi in zip(op.inputs, opdef.vjp(g, ins, out, attrs, needs), strict=True):
            if gi is None:
                continue
            grads[name] = gi if name not in grads else grads[name] + gi
    return grads


def value_and_grad(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
) -> tuple[float, dict[str, np.ndarray]]:
    """J and dJ/dW for every parameter W, by reverse-mode differentiation in one process."""
    values = forward(graph, params, batch)
    one = np.ones((), dtype=check_params(graph, params))
    grads = backward(graph, values, {graph.output: one})
    return float(values[graph.output]), {v.name: grads[v.name] for v in graph.params}
