"""Forward mode over the IR (JVP) and Hessian-vector products by forward-over-reverse: a reference.

Forward-over-reverse: the forward pass carries, beside every value, its tangent along a
direction v of the parameters (each op's `jvp` rule); the backward pass carries, beside every
cotangent g = dJ/du, its tangent dg = d/dt dJ/du(W + t v) (each op's `vjp_jvp` rule, the
derivative of its VJP). At a parameter, dg is (H v)_W. A tangent of None is zero: inputs and
labels have none, so work on them is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from graphpart.autodiff import check_params, forward
from graphpart.errors import GraphpartError
from graphpart.ir.graph import Graph
from graphpart.ir.ops import get

Tree = dict[str, np.ndarray]


def check_direction(graph: Graph, v: Mapping[str, np.ndarray], dtype: np.dtype) -> Tree:
    """Check a direction (one array per parameter, the parameter's shape); cast to `dtype`."""
    want = {p.name: p.shape for p in graph.params}
    if not isinstance(v, Mapping):
        raise GraphpartError(
            f"direction is a {type(v).__name__}; give a dict with one array per parameter "
            f"{sorted(want)} (or use unflatten(graph, vector))"
        )
    missing, extra = sorted(set(want) - set(v)), sorted(set(v) - set(want))
    if missing or extra:
        raise GraphpartError(
            f"direction does not match the parameters: missing {missing or 'none'}, unexpected "
            f"{extra or 'none'}; the graph's parameters are {sorted(want)}"
        )
    out: Tree = {}
    for name, shape in want.items():
        a = np.asarray(v[name])
        if a.shape != shape:
            raise GraphpartError(
                f"direction[{name!r}] has shape {a.shape}; the parameter's shape is {shape}"
            )
        out[name] = np.ascontiguousarray(a, dtype=dtype)
    return out


def flatten(graph: Graph, tree: Mapping[str, np.ndarray]) -> np.ndarray:
    """One vector of every parameter-shaped array, in the graph's parameter order."""
    return np.concatenate([np.ravel(tree[p.name]) for p in graph.params])


def unflatten(graph: Graph, vector: np.ndarray) -> Tree:
    """The inverse of `flatten`: a vector back into one array per parameter."""
    sizes = [int(np.prod(p.shape)) for p in graph.params]
    if np.shape(vector) != (sum(sizes),):
        raise GraphpartError(
            f"vector has shape {np.shape(vector)}; the graph has {sum(sizes)} parameter entries"
        )
    out, start = {}, 0
    for p, n in zip(graph.params, sizes, strict=True):
        out[p.name] = np.asarray(vector[start : start + n]).reshape(p.shape)
        start += n
    return out


def _attrs(opdef: Any, op: Any, values: Mapping[str, Any], scale: float | None) -> dict:
    attrs = dict(op.attrs)
    if opdef.kind == "loss":
        attrs["scale"] = 1.0 / len(values[op.inputs[0]]) if scale is None else scale
    return attrs


def forward_tangents(
    graph: Graph,
    values: Mapping[str, Any],
    tangents: Mapping[str, Any],
    scale: float | None = None,
) -> dict[str, Any]:
    """The tangent of every variable, given the tangents of some (parameters, a stage's input).

    `values` are the forward pass's values (autodiff.forward); a variable with no tangent
    (inputs, labels) gets None, which the rules read as zero.
    """
    dv: dict[str, Any] = dict(tangents)
    for op in graph.ops:
        opdef = get(op.op)
        dins = [dv.get(n) for n in op.inputs]
        if all(d is None for d in dins):
            dv[op.output] = None
            continue
        ins = [values[n] for n in op.inputs]
        dv[op.output] = opdef.jvp(dins, ins, values[op.output], _attrs(opdef, op, values, scale))
    return dv


def backward_tangents(
    graph: Graph,
    values: Mapping[str, Any],
    tvalues: Mapping[str, Any],
    seeds: Mapping[str, Any],
    tseeds: Mapping[str, Any] | None = None,
    scale: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cotangents of every variable reachable backwards from `seeds`, and their tangents.

    The reverse pass of autodiff.backward, with each op's `vjp_jvp` run beside its VJP. Each
    rule sees only the tensors its op declares: `saves` of the values, `tangent_saves` of the
    tangents (others are None), so those declarations are checked by use too.
    """
    grads: dict[str, Any] = dict(seeds)
    tgrads: dict[str, Any] = dict(tseeds or {})
    wants = {v.name for v in graph.vars if v.role != "label"}
    for op in reversed(graph.ops):
        g = grads.get(op.output)
        if g is None:
            continue
        dg = tgrads.get(op.output)
        opdef = get(op.op)
        attrs = _attrs(opdef, op, values, scale)
        n = len(op.inputs)
        keep = set(opdef.saved_inputs(n))
        ins = [values[name] if i in keep else None for i, name in enumerate(op.inputs)]
        out = values[op.output] if opdef.saves_output else None
        tkeep = set(opdef.tangent_inputs(n))
        dins = [tvalues.get(name) if i in tkeep else None for i, name in enumerate(op.inputs)]
        dout = tvalues.get(op.output) if opdef.tangent_output else None
        needs = [name in wants for name in op.inputs]
        gis = opdef.vjp(g, ins, out, attrs, needs)
        dgis = opdef.vjp_jvp(g, dg, ins, dins, out, dout, attrs, needs)
        for name, gi, dgi in zip(op.inputs, gis, dgis, strict=True):
            if gi is None:
                continue
            grads[name] = gi if name not in grads else grads[name] + gi
            if dgi is not None:
                tgrads[name] = dgi if tgrads.get(name) is None else tgrads[name] + dgi
    return grads, tgrads


def _zeros_if_none(graph: Graph, tree: Mapping[str, Any], dtype: np.dtype) -> Tree:
    return {
        p.name: np.zeros(p.shape, dtype) if tree.get(p.name) is None else tree[p.name]
        for p in graph.params
    }


def jvp(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
    v: Mapping[str, np.ndarray],
) -> tuple[float, float]:
    """J and its directional derivative dJ/dt (W + t v) at t = 0, by forward mode alone.

    It equals the gradient's inner product with v:

    >>> import numpy as np
    >>> from graphpart import init_params, mlp, value_and_grad
    >>> g = mlp([4, 3, 2])
    >>> params = init_params(g, dtype="float64")
    >>> batch = {"x": np.ones((5, 4)), "y": np.array([0, 1, 0, 1, 1])}
    >>> v = {k: np.ones_like(w) for k, w in params.items()}
    >>> J, dJ = jvp(g, params, batch, v)
    >>> _, grads = value_and_grad(g, params, batch, executor="reference")
    >>> bool(np.isclose(dJ, sum(float((grads[k] * v[k]).sum()) for k in v)))
    True
    """
    dtype = check_params(graph, params)
    tv = check_direction(graph, v, dtype)
    values = forward(graph, params, batch)
    dv = forward_tangents(graph, values, tv)
    dJ = dv.get(graph.output)
    return float(values[graph.output]), 0.0 if dJ is None else float(dJ)


def value_grad_hvp(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
    v: Mapping[str, np.ndarray],
) -> tuple[float, Tree, Tree]:
    """J, dJ/dW and the Hessian-vector product H v in one forward-over-reverse sweep."""
    dtype = check_params(graph, params)
    tv = check_direction(graph, v, dtype)
    values = forward(graph, params, batch)
    dv = forward_tangents(graph, values, tv)
    one = np.ones((), dtype=dtype)
    grads, tgrads = backward_tangents(graph, values, dv, {graph.output: one})
    g = _zeros_if_none(graph, grads, dtype)
    return float(values[graph.output]), g, _zeros_if_none(graph, tgrads, dtype)


def hvp(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
    v: Mapping[str, np.ndarray],
) -> Tree:
    """H v: the Hessian of J over all parameters times the direction v (one array per param).

    Forward-over-reverse: one forward pass with tangents, one reverse pass with cotangents and
    their tangents. The Hessian is symmetric, so u^T (H v) = v^T (H u):

    >>> import numpy as np
    >>> from graphpart import init_params, mlp
    >>> g = mlp([4, 3, 2], activation="tanh")
    >>> params = init_params(g, dtype="float64")
    >>> batch = {"x": np.ones((5, 4)), "y": np.array([0, 1, 0, 1, 1])}
    >>> rng = np.random.default_rng(0)
    >>> u, v = ({k: rng.normal(size=w.shape) for k, w in params.items()} for _ in range(2))
    >>> Hv, Hu = hvp(g, params, batch, v), hvp(g, params, batch, u)
    >>> dot = lambda a, b: sum(float((a[k] * b[k]).sum()) for k in a)
    >>> bool(np.isclose(dot(u, Hv), dot(v, Hu), rtol=1e-12))
    True
    """
    return value_grad_hvp(graph, params, batch, v)[2]


def dense_hessian(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
) -> np.ndarray:
    """The whole Hessian (n x n over the flattened parameters), one HVP per column."""
    dtype = check_params(graph, params)
    n = sum(int(np.prod(p.shape)) for p in graph.params)
    H = np.empty((n, n), dtype)
    e = np.zeros(n, dtype)
    for i in range(n):
        e[i] = 1.0
        H[:, i] = flatten(graph, hvp(graph, params, batch, unflatten(graph, e)))
        e[i] = 0.0
    return H


def kept_bytes(graph: Graph, batch_rows: int, itemsize: int) -> tuple[int, int]:
    """Bytes a backward pass reads of the forward pass (non-parameter saved values), for a
    gradient and for an HVP (those plus the tangents its `vjp_jvp` rules read, directions of
    the parameters excluded): what is kept between the two passes per batch."""
    params = {p.name for p in graph.params}
    saved: set[str] = set()
    tsaved: set[str] = set()
    for op in graph.ops:
        opdef = get(op.op)
        n = len(op.inputs)
        saved.update(op.inputs[i] for i in opdef.saved_inputs(n))
        tsaved.update(op.inputs[i] for i in opdef.tangent_inputs(n))
        if opdef.saves_output:
            saved.add(op.output)
        if opdef.tangent_output:
            tsaved.add(op.output)
    no_tangent = {v.name for v in graph.inputs + graph.labels}

    def size(names: Sequence[str] | set[str], itemsize_of: Any) -> int:
        total = 0
        for name in names:
            v = graph.var(name)
            total += int(np.prod(v.concrete_shape(batch_rows))) * itemsize_of(v)
        return total

    def item(v: Any) -> int:
        return 8 if v.role == "label" and v.shape == ("B",) else itemsize  # class labels: int64

    grad = size(saved - params, item)
    extra = size(tsaved - params - no_tangent, item)
    return grad, grad + extra
