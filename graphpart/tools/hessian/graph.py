"""The graph forward-over-reverse builds: four passes over the model's graph, as IR records.

Pass 0 is the forward pass (the model's own ops); pass 1 the tangents along v (`dX`, each op's
`jvp`); pass 2 the reverse pass (cotangents `gX` = dJ/dX, each op's VJP); pass 3 the tangents
of the cotangents (`dgX`, each op's `vjp_jvp`); dgW is (H v)_W. Each backward node reads only
what its op declares (`saves`, `tangent_saves`), so the edges show what is kept in memory.
"""

from __future__ import annotations

from pathlib import Path

from graphpart.ir import write_graph
from graphpart.ir.graph import Graph, Op, Var
from graphpart.ir.ops import get

PASSES = ("forward", "tangent forward (jvp)", "backward (vjp)", "tangent backward (vjp_jvp)")
# which primal tensors each op's jvp reads (beside the input tangents)
_JVP_READS = {"matmul": "ins", "cross_entropy": "ins", "mse": "ins", "l2": "ins"}


def hvp_graph(graph: Graph) -> tuple[Graph, dict[str, int]]:
    """The forward-over-reverse graph of `graph` and the pass (0-3) of each node, for drawing.

    Not a graph the executor runs (its ops are rules, not registry ops): a picture of what the
    reference computes (graphpart.hvp), node for node.
    """
    vars_: list[Var] = list(graph.vars)
    ops: list[Op] = list(graph.ops)
    pass_of: dict[str, int] = {v.name: 0 for v in graph.vars}
    pass_of.update({o.name: 0 for o in graph.ops})
    no_tangent = {v.name for v in graph.inputs + graph.labels}

    def add_var(name: str, like: Var, k: int, role: str = "value") -> None:
        vars_.append(Var(name, role, like.shape, like.layer))
        pass_of[name] = k

    def add_op(name: str, kind: str, inputs: list[str], output: str, layer: int, k: int) -> None:
        ops.append(Op(name, kind, tuple(inputs), output, layer))
        pass_of[name] = k

    # pass 1: tangents; the parameters' tangents are the direction v (inputs of the HVP)
    has_tangent = set()
    for p in graph.params:
        add_var(f"d{p.name}", p, 1, role="input")
        has_tangent.add(p.name)
    for o in graph.ops:
        ts = [n for n in o.inputs if n in has_tangent]
        if not ts:
            continue
        reads = list(o.inputs) if _JVP_READS.get(o.op) == "ins" else []
        if get(o.op).saves_output and get(o.op).kind == "tensor" and o.op != "matmul":
            reads = [o.output]
        add_var(f"d{o.output}", graph.var(o.output), 1)
        add_op(
            f"jvp:{o.name}",
            f"jvp {o.op}",
            [f"d{n}" for n in ts] + reads,
            f"d{o.output}",
            o.layer,
            1,
        )
        has_tangent.add(o.output)
    # passes 2 and 3: cotangents and their tangents; contributions meeting at a node are summed
    contrib: dict[str, list[str]] = {}
    reached = {graph.output}
    add_var(f"g{graph.output}", graph.var(graph.output), 2, role="input")  # the seed, 1
    order: list[tuple[Op, int, str]] = []
    for o in reversed(graph.ops):
        if o.output not in reached:
            continue
        for i, n in enumerate(o.inputs):
            if n in no_tangent:
                continue
            contrib.setdefault(n, []).append(o.name)
            order.append((o, i, n))
            reached.add(n)
    pending = dict(contrib)
    has_dg: set[str] = set()  # cotangents whose tangent is not zero (the seed's tangent is)
    pending_dg: dict[str, list[str]] = {}
    for o, i, n in order:
        opdef = get(o.op)
        k_in = len(o.inputs)
        saved = [o.inputs[j] for j in opdef.saved_inputs(k_in) if j < k_in]
        saved += [o.output] if opdef.saves_output else []
        tsaved = [
            f"d{o.inputs[j]}" for j in opdef.tangent_inputs(k_in) if o.inputs[j] in has_tangent
        ]
        tsaved += [f"d{o.output}"] if opdef.tangent_output else []
        many = len(contrib[n]) > 1
        g_out, g_in = f"g{o.output}", f"g{n}" + (f"<{o.name}" if many else "")
        dg_out = [f"dg{o.output}"] if o.output in has_dg else []
        like = graph.var(n)
        add_var(g_in, like, 2)
        add_op(f"vjp:{o.name}:{i}", f"vjp {o.op}", [g_out, *saved], g_in, o.layer, 2)
        linear = o.op in ("add", "bias_add")  # the VJP does not depend on the values
        if dg_out or (tsaved and not linear):
            add_var(f"d{g_in}", like, 3)
            reads = [*dg_out] if linear else [g_out, *dg_out, *saved, *tsaved]
            add_op(f"vjp_jvp:{o.name}:{i}", f"vjp_jvp {o.op}", reads, f"d{g_in}", o.layer, 3)
            pending_dg.setdefault(n, []).append(f"d{g_in}")
        if many:
            pending[n] = [x for x in pending[n] if x != o.name]
            if pending[n]:
                continue
            add_var(f"g{n}", like, 2)
            add_op(f"sum:g{n}", "add", [f"g{n}<{c}" for c in contrib[n]], f"g{n}", o.layer, 2)
            parts = pending_dg.get(n, [])
            if len(parts) > 1:
                add_var(f"dg{n}", like, 3)
                add_op(f"sum:dg{n}", "add", parts, f"dg{n}", o.layer, 3)
            elif parts:  # one nonzero part: it is the sum
                _rename(vars_, ops, parts[0], f"dg{n}")
                pass_of[f"dg{n}"] = 3
        if pending_dg.get(n):
            has_dg.add(n)
    return Graph(tuple(vars_), tuple(ops), output=graph.output, loss=graph.loss), pass_of


def _rename(vars_: list[Var], ops: list[Op], old: str, new: str) -> None:
    """Give the variable `old` (and the op writing it) the name `new`."""
    for i, v in enumerate(vars_):
        if v.name == old:
            vars_[i] = Var(new, v.role, v.shape, v.layer)
    for i, o in enumerate(ops):
        if o.output == old:
            ops[i] = Op(o.name, o.op, o.inputs, new, o.layer, o.attrs)


def listing(graph: Graph) -> str:
    """The forward-over-reverse graph as text, one node per line, pass by pass."""
    g, pass_of = hvp_graph(graph)
    lines = []
    for k, title in enumerate(PASSES):
        lines.append(f"pass {k}: {title}")
        for o in g.ops:
            if pass_of[o.name] == k:
                lines.append(f"  {o.output} = {o.op}({', '.join(o.inputs)})")
    return "\n".join(lines)


def write(graph: Graph, out: str | Path, overwrite: bool = False) -> Path:
    """Write the forward-over-reverse graph as DOT (or SVG/PNG/PDF with Graphviz), coloured by
    pass, with the passes named in the legend."""
    g, pass_of = hvp_graph(graph)
    path = write_graph(g, out, pass_of, overwrite=overwrite)
    if path.suffix.lower() in (".dot", ".gv", ""):
        text = path.read_text().replace('label="stages"', 'label="passes"')
        for k, title in enumerate(PASSES):
            text = text.replace(f'label="stage {k}"', f'label="{title}"')
        path.write_text(text)
    return path
