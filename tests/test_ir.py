"""Contract of the graph IR (graphpart.ir: graph, mlp, dot).

`mlp(sizes, activation, bias, loss, weight_decay)` builds the textbook graph generalised to any
depth: for [d, h, q] without bias the variables are x, W1, z1, h1, W2, o, y, L, s, J (with bias
also m_i and b_i), in topological order, with batch-major shapes using the symbolic batch "B"
(x is B x d, W_i is out x in), layers 1..n (s and J belong to layer 0), and an l2 regulariser
over the weights only. Var, Op and Graph are frozen records. `Graph.validate()` raises a
GraphError naming the offending node for: a cycle / non-topological order, a dangling input, a
shape mismatch, an unknown op, a duplicate variable, an operator writing a parameter (and the
other malformations it checks). `mlp()` raises a GraphError naming the bad value for
non-positive sizes, too few sizes, unknown activation or loss and a negative weight decay.
`to_dot()` draws variables as boxes and operators as circles with every edge, coloured by
stage when given a stage mapping; `write_graph` writes .dot directly and renders .svg/.png/.pdf
with Graphviz's `dot`, raising a GraphpartError that says so when `dot` is missing.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess

import pytest

from graphpart.errors import GraphError, GraphpartError
from graphpart.ir import BATCH, Graph, Op, Var, mlp, to_dot, write_graph
from graphpart.ir import dot as dotmod
from graphpart.ir.ops import ACTIVATIONS, LOSSES
from graphpart.plan.partition import partition

# -- mlp: names, shapes, roles, layers ------------------------------------------------------------


def test_one_hidden_layer_names_without_bias():
    g = mlp([4, 3, 2])
    assert g.names == ["x", "W1", "z1", "h1", "W2", "o", "y", "L", "s", "J"]
    assert [o.name for o in g.ops] == ["matmul1", "relu1", "matmul2", "loss", "l2", "objective"]
    assert g.output == "J" and g.loss == "L"


def test_one_hidden_layer_names_with_bias():
    g = mlp([4, 3, 2], bias=True)
    assert g.names == [
        "x",
        "W1",
        "m1",
        "b1",
        "z1",
        "h1",
        "W2",
        "m2",
        "b2",
        "o",
        "y",
        "L",
        "s",
        "J",
    ]
    assert [o.name for o in g.ops] == [
        "matmul1",
        "bias1",
        "relu1",
        "matmul2",
        "bias2",
        "loss",
        "l2",
        "objective",
    ]


def test_shapes_are_batch_major_with_symbolic_batch():
    d, h, q = 7, 5, 3
    g = mlp([d, h, q], bias=True)
    want = {
        "x": (BATCH, d),
        "W1": (h, d),
        "m1": (BATCH, h),
        "b1": (h,),
        "z1": (BATCH, h),
        "h1": (BATCH, h),
        "W2": (q, h),
        "m2": (BATCH, q),
        "b2": (q,),
        "o": (BATCH, q),
        "y": (BATCH,),
        "L": (),
        "s": (),
        "J": (),
    }
    assert {v.name: v.shape for v in g.vars} == want
    assert BATCH == "B"
    assert g["x"].concrete_shape(11) == (11, d)
    assert g["W1"].concrete_shape(11) == (h, d)
    assert g["L"].concrete_shape(11) == ()


def test_mse_labels_have_the_output_shape():
    g = mlp([4, 3, 2], loss="mse")
    assert g["y"].shape == (BATCH, 2)
    assert g.producer("L").op == "mse"


def test_roles():
    g = mlp([4, 3, 6, 2], bias=True)
    assert [v.name for v in g.inputs] == ["x"]
    assert [v.name for v in g.labels] == ["y"]
    assert [v.name for v in g.params] == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert all(v.is_param for v in g.params)
    assert not g["x"].is_param and not g["z1"].is_param
    assert {v.role for v in g.vars if v.name not in ("x", "y") and not v.is_param} == {"value"}


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
@pytest.mark.parametrize("bias", [False, True])
def test_deep_names_and_layers(depth, bias):
    sizes = [3 + i for i in range(depth + 1)]
    g = mlp(sizes, activation="tanh", bias=bias)
    n = depth
    assert g.layers == list(range(1, n + 1))
    for i in range(1, n + 1):
        last = i == n
        w = g[f"W{i}"]
        assert w.shape == (sizes[i], sizes[i - 1]) and w.layer == i
        z = "o" if last else f"z{i}"
        assert g[z].layer == i
        if not last:
            assert g[f"h{i}"].layer == i
            assert g.producer(f"h{i}").op == "tanh"
        else:
            assert f"h{i}" not in g  # the output layer has no activation
        if bias:
            assert g[f"b{i}"].shape == (sizes[i],) and g[f"b{i}"].layer == i
            assert g.producer(z).op == "bias_add"
            assert g.producer(f"m{i}").op == "matmul"
        else:
            assert f"b{i}" not in g and f"m{i}" not in g
            assert g.producer(z).op == "matmul"
    assert g["x"].layer == 1
    assert g["y"].layer == n and g["L"].layer == n
    assert g["s"].layer == 0 and g["J"].layer == 0
    assert g.producer("s").layer == 0 and g.producer("J").layer == 0
    assert all(o.layer in range(0, n + 1) for o in g.ops)


@pytest.mark.parametrize("bias", [False, True])
def test_ops_are_in_topological_order(bias):
    g = mlp([5, 4, 3, 2], bias=bias, loss="mse")
    defined = {v.name for v in g.vars if v.role != "value"}
    for o in g.ops:
        assert all(i in defined for i in o.inputs), o
        assert o.output not in defined, o
        defined.add(o.output)
    assert defined == set(g.names)


def test_regulariser_reads_weights_not_biases():
    g = mlp([4, 3, 3, 2], bias=True, weight_decay=0.25)
    l2 = g.producer("s")
    assert l2.op == "l2"
    assert l2.inputs == ("W1", "W2", "W3")
    assert l2.attr("weight_decay") == 0.25
    assert l2.attr("missing", "dflt") == "dflt"
    obj = g.producer("J")
    assert obj.op == "add" and obj.inputs == ("L", "s")


def test_info_records_the_build_arguments():
    g = mlp([4, 3, 2], activation="sigmoid", bias=True, loss="mse", weight_decay=1)
    assert g.get_info("sizes") == (4, 3, 2)
    assert g.get_info("activation") == "sigmoid"
    assert g.get_info("bias") is True
    assert g.get_info("loss") == "mse"
    assert g.get_info("weight_decay") == 1.0
    assert g.get_info("nope", 42) == 42


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_activation_and_loss_builds(activation, loss):
    g = mlp([3, 4, 2], activation=activation, loss=loss)
    assert g.producer("h1").op == activation
    assert g.producer("L").op == loss
    assert g.validate() is g


def test_lookup_helpers():
    g = mlp([4, 3, 2])
    assert g.var("W1") is g["W1"]
    assert "z1" in g and "zz" not in g
    assert g.producer("x") is None  # inputs have no producer
    assert g.producer("z1").name == "matmul1"
    assert [o.name for o in g.consumers("W1")] == ["matmul1", "l2"]
    assert [o.name for o in g.consumers("J")] == []
    with pytest.raises(GraphError, match="no variable named 'zz'"):
        g.var("zz")
    with pytest.raises(GraphError, match="'zz'"):
        g["zz"]


def test_str_lists_params_and_ops():
    g = mlp([4, 3, 2])
    text = str(g)
    assert text.startswith("Graph")
    assert "W1 [param] 3 x 4" in text
    assert "z1 = matmul(x, W1)" in text
    assert "J = add(L, s)" in text
    assert str(g["L"]) == "L [value] scalar"
    assert str(g.producer("h1")) == "h1 = relu(z1)"


def test_records_are_frozen():
    g = mlp([4, 3, 2])
    with pytest.raises(dataclasses.FrozenInstanceError):
        g["x"].name = "q"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.ops[0].op = "relu"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.output = "L"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.vars = ()  # type: ignore[misc]
    assert isinstance(g.vars, tuple) and isinstance(g.ops, tuple)


def test_equal_builds_compare_equal():
    assert mlp([4, 3, 2]) == mlp([4, 3, 2])
    assert mlp([4, 3, 2]) != mlp([4, 3, 2], bias=True)
    assert hash(mlp([4, 3, 2])["W1"]) == hash(mlp([4, 3, 2])["W1"])


# -- validate -------------------------------------------------------------------------------------


def _replace(g: Graph, *, vars_=None, ops=None, output=None) -> Graph:
    return Graph(
        tuple(vars_ if vars_ is not None else g.vars),
        tuple(ops if ops is not None else g.ops),
        output=output if output is not None else g.output,
        loss=g.loss,
    )


def _swap_var(g: Graph, name: str, new: Var) -> list[Var]:
    return [new if v.name == name else v for v in g.vars]


def _swap_op(g: Graph, name: str, new: Op) -> list[Op]:
    return [new if o.name == name else o for o in g.ops]


def test_hand_built_graph_validates():
    vars_ = (
        Var("x", "input", (BATCH, 3), 1),
        Var("W", "param", (2, 3), 1),
        Var("o", "value", (BATCH, 2), 1),
        Var("y", "label", (BATCH,), 1),
        Var("L", "value", (), 1),
    )
    ops = (Op("mm", "matmul", ("x", "W"), "o", 1), Op("xent", "cross_entropy", ("o", "y"), "L", 1))
    g = Graph(vars_, ops, output="L")
    assert g.validate() is g


def test_swapped_ops_are_not_topological():
    g = mlp([4, 3, 2])
    ops = list(g.ops)
    ops[0], ops[1] = ops[1], ops[0]  # relu1 now reads z1 before matmul1 writes it
    with pytest.raises(GraphError, match=r"'relu1'.*'z1'.*later by 'matmul1'.*cycle"):
        _replace(g, ops=ops).validate()


def test_cycle_is_reported():
    # z1 = matmul(h1, W1'), h1 = relu(z1): h1 feeds the op that produces its own input
    g = mlp([3, 3, 2])
    ops = _swap_op(g, "matmul1", Op("matmul1", "matmul", ("h1", "W1"), "z1", 1))
    with pytest.raises(GraphError, match=r"'matmul1' reads 'h1'.*cycle"):
        _replace(g, ops=ops).validate()


def test_op_reading_its_own_output_is_a_cycle():
    g = mlp([4, 3, 2])
    ops = _swap_op(g, "relu1", Op("relu1", "relu", ("h1",), "h1", 1))
    with pytest.raises(GraphError, match=r"'relu1' reads 'h1'.*cycle"):
        _replace(g, ops=ops).validate()


def test_dangling_input():
    g = mlp([4, 3, 2])
    ops = _swap_op(g, "matmul2", Op("matmul2", "matmul", ("ghost", "W2"), "o", 2))
    with pytest.raises(GraphError, match=r"'matmul2' reads 'ghost', which nothing defines"):
        _replace(g, ops=ops).validate()


def test_shape_mismatch_names_op_and_dims():
    g = mlp([4, 3, 2])
    vars_ = _swap_var(g, "W2", Var("W2", "param", (2, 5), 2))  # in-dim 5, but h1 has 3
    with pytest.raises(GraphError, match=r"'matmul2'.*3 features.*expects 5"):
        _replace(g, vars_=vars_).validate()


def test_declared_output_shape_mismatch():
    g = mlp([4, 3, 2])
    vars_ = _swap_var(g, "z1", Var("z1", "value", (BATCH, 4), 1))
    msg = r"'matmul1'.*gives shape \(B, 3\).*'z1' is declared \(B, 4\)"
    with pytest.raises(GraphError, match=msg):
        _replace(g, vars_=vars_).validate()


def test_unknown_op():
    g = mlp([4, 3, 2])
    ops = _swap_op(g, "relu1", Op("relu1", "softsign", ("z1",), "h1", 1))
    with pytest.raises(GraphError, match=r"'relu1' uses unknown op 'softsign'.*relu"):
        _replace(g, ops=ops).validate()


def test_duplicate_variable():
    g = mlp([4, 3, 2])
    with pytest.raises(GraphError, match=r"'W1' is declared twice"):
        _replace(g, vars_=[*g.vars, Var("W1", "param", (3, 4), 1)]).validate()


def test_operator_writing_a_parameter():
    g = mlp([4, 3, 2])
    vars_ = _swap_var(g, "h1", Var("h1", "param", (BATCH, 3), 1))
    with pytest.raises(GraphError, match=r"'relu1' writes 'h1', a param"):
        _replace(g, vars_=vars_).validate()


def test_operator_writing_an_input():
    g = mlp([4, 3, 2])
    ops = [*g.ops, Op("clobber", "relu", ("z1",), "x", 1)]
    with pytest.raises(GraphError, match=r"'clobber' writes 'x', an? input"):
        _replace(g, ops=ops).validate()


def test_variable_written_twice():
    g = mlp([4, 3, 2])
    ops = list(g.ops)
    ops.insert(2, Op("relu1b", "relu", ("z1",), "h1", 1))
    with pytest.raises(GraphError, match=r"'h1' is written by two operators"):
        _replace(g, ops=ops).validate()


def test_undeclared_output():
    g = mlp([4, 3, 2])
    ops = _swap_op(g, "relu1", Op("relu1", "relu", ("z1",), "hh", 1))
    with pytest.raises(GraphError, match=r"'relu1' writes undeclared variable 'hh'"):
        _replace(g, ops=ops).validate()


def test_value_never_written():
    g = mlp([4, 3, 2])
    with pytest.raises(GraphError, match=r"value 'orphan' is declared but no operator writes it"):
        _replace(g, vars_=[*g.vars, Var("orphan", "value", (2,), 1)]).validate()


def test_bad_role_and_bad_dimension():
    g = mlp([4, 3, 2])
    with pytest.raises(GraphError, match=r"'x' has role 'data'"):
        _replace(g, vars_=_swap_var(g, "x", Var("x", "data", (BATCH, 4), 1))).validate()
    with pytest.raises(GraphError, match=r"'W1' has dimension 0"):
        _replace(g, vars_=_swap_var(g, "W1", Var("W1", "param", (0, 4), 1))).validate()
    with pytest.raises(GraphError, match=r"'W1' has dimension 'N'"):
        _replace(g, vars_=_swap_var(g, "W1", Var("W1", "param", ("N", 4), 1))).validate()


def test_graph_output_must_be_a_scalar_variable():
    g = mlp([4, 3, 2])
    with pytest.raises(GraphError, match=r"graph output 'Q' is not a variable"):
        _replace(g, output="Q").validate()
    with pytest.raises(GraphError, match=r"graph output 'o' must be a scalar"):
        _replace(g, output="o").validate()


def test_bad_op_shape_rule_names_op():
    g = mlp([4, 3, 2])
    ops = _swap_op(g, "l2", Op("l2", "l2", ("W1", "W2"), "s", 0, (("weight_decay", -1.0),)))
    with pytest.raises(GraphError, match=r"'l2'.*weight_decay=-1.0"):
        _replace(g, ops=ops).validate()


# -- mlp argument errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "bad"),
    [
        ([4, 0, 2], "0"),
        ([4, -3, 2], "-3"),
        ([0, 2], "0"),
        ([4, 2.5, 2], "2.5"),
        ([4, "3", 2], "'3'"),
        ([4, True, 2], "True"),
    ],
)
def test_mlp_rejects_non_positive_sizes(sizes, bad):
    with pytest.raises(GraphError, match=rf"size {re.escape(bad)} is not a positive integer"):
        mlp(sizes)


@pytest.mark.parametrize("sizes", [[], [5]])
def test_mlp_needs_two_sizes(sizes):
    with pytest.raises(GraphError, match=re.escape(f"sizes={sizes}") + ".*at least"):
        mlp(sizes)


def test_mlp_rejects_unknown_activation_and_loss():
    with pytest.raises(GraphError, match=r"activation='softsign'.*relu"):
        mlp([4, 3, 2], activation="softsign")
    with pytest.raises(GraphError, match=r"loss='hinge'.*cross_entropy"):
        mlp([4, 3, 2], loss="hinge")


@pytest.mark.parametrize("wd", [-0.1, -1, float("nan"), "0.1", None])
def test_mlp_rejects_bad_weight_decay(wd):
    with pytest.raises(GraphError, match=re.escape(f"weight_decay={wd!r}")):
        mlp([4, 3, 2], weight_decay=wd)


def test_mlp_rejects_infinite_weight_decay():
    with pytest.raises(GraphError, match="weight_decay=inf"):
        mlp([4, 3, 2], weight_decay=float("inf"))


def test_mlp_accepts_zero_and_int_weight_decay():
    assert mlp([4, 3, 2], weight_decay=0).producer("s").attr("weight_decay") == 0.0
    assert mlp([4, 3, 2], weight_decay=2).producer("s").attr("weight_decay") == 2.0


# -- DOT export -----------------------------------------------------------------------------------

NODE = re.compile(r'^\s*"([^"]+)" \[(.*)\];$')
EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)";$')


def _parse(text: str) -> tuple[dict[str, str], set[tuple[str, str]]]:
    nodes, edges = {}, set()
    for line in text.splitlines():
        if m := EDGE.match(line):
            edges.add((m.group(1), m.group(2)))
        elif m := NODE.match(line):
            nodes[m.group(1)] = m.group(2)
    return nodes, edges


def _fill(attrs: str) -> str:
    return re.search(r'fillcolor="([^"]+)"', attrs).group(1)


@pytest.mark.parametrize("bias", [False, True])
def test_dot_boxes_circles_and_every_edge(bias):
    g = mlp([4, 3, 5, 2], bias=bias, weight_decay=0.1)
    text = to_dot(g)
    assert text.startswith("digraph") and text.rstrip().endswith("}")
    nodes, edges = _parse(text)
    for v in g.vars:
        assert "shape=box" in nodes[v.name], v.name
        assert f'label="{v.name}\\n' in nodes[v.name]
        assert ("penwidth=2" in nodes[v.name]) == v.is_param
    for o in g.ops:
        attrs = nodes[f"op:{o.name}"]
        assert "shape=circle" in attrs and f'label="{o.op}"' in attrs
    assert len(nodes) == len(g.vars) + len(g.ops)
    want = set()
    for o in g.ops:
        want |= {(i, f"op:{o.name}") for i in o.inputs}
        want.add((f"op:{o.name}", o.output))
    assert edges == want
    assert "cluster_legend" not in text  # no stages, no legend


def test_dot_shape_labels():
    nodes, _ = _parse(to_dot(mlp([4, 3, 2])))
    assert 'label="x\\nB x 4"' in nodes["x"]
    assert 'label="W1\\n3 x 4"' in nodes["W1"]
    assert 'label="J\\nscalar"' in nodes["J"]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_dot_stage_colours(k):
    g = mlp([4, 3, 5, 2], bias=True, weight_decay=0.1)
    plan = partition(g, k, "uniform")
    stage_of = plan.stage_of()
    nodes, edges = _parse(to_dot(g, stage_of))
    for v in g.vars:
        assert _fill(nodes[v.name]) == dotmod.STAGE_COLOURS[stage_of[v.name]], v.name
    for o in g.ops:
        assert _fill(nodes[f"op:{o.name}"]) == dotmod.STAGE_COLOURS[stage_of[o.name]], o.name
    for s in range(k):
        assert _fill(nodes[f"legend{s}"]) == dotmod.STAGE_COLOURS[s]
        assert f'label="stage {s}"' in nodes[f"legend{s}"]
    assert "cluster_legend" in to_dot(g, stage_of)
    assert len(edges) == len(_parse(to_dot(g))[1])  # colouring adds no edges
    if k > 1:
        assert len({_fill(nodes[f"op:matmul{i}"]) for i in (1, 2, 3)}) > 1


def test_dot_partial_stage_mapping_keeps_role_colours():
    g = mlp([4, 3, 2])
    nodes, _ = _parse(to_dot(g, {"W1": 9}))
    assert _fill(nodes["W1"]) == dotmod.STAGE_COLOURS[9 % len(dotmod.STAGE_COLOURS)]
    assert _fill(nodes["W2"]) == dotmod.ROLE_STYLE["param"]
    assert _fill(nodes["x"]) == dotmod.ROLE_STYLE["input"]


@pytest.mark.parametrize("suffix", [".dot", ".gv"])
def test_write_graph_dot(tmp_path, suffix):
    g = mlp([4, 3, 2])
    out = write_graph(g, tmp_path / f"g{suffix}")
    assert out == tmp_path / f"g{suffix}"
    assert out.read_text() == to_dot(g)
    plan = partition(g, 2, "uniform")
    out2 = write_graph(g, str(tmp_path / "staged.dot"), plan.stage_of())
    assert out2.read_text() == to_dot(g, plan.stage_of())


def test_write_graph_svg_without_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(dotmod.shutil, "which", lambda name: None)

    def no_run(*a, **k):
        raise AssertionError("dot must not be run when it is not installed")

    monkeypatch.setattr(dotmod.subprocess, "run", no_run)
    with pytest.raises(GraphpartError, match=r"\.svg needs Graphviz's `dot`.*\.dot file"):
        write_graph(mlp([4, 3, 2]), tmp_path / "g.svg")
    assert not (tmp_path / "g.svg").exists()


@pytest.mark.parametrize("fmt", ["svg", "png", "pdf"])
def test_write_graph_renders_with_dot(tmp_path, monkeypatch, fmt):
    calls = []
    monkeypatch.setattr(dotmod.shutil, "which", lambda name: f"/opt/bin/{name}")

    def fake_run(cmd, input=None, check=False, **kw):
        calls.append((cmd, input, check))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(dotmod.subprocess, "run", fake_run)
    g = mlp([4, 3, 2])
    out = tmp_path / f"graph.{fmt.upper()}"  # the suffix is matched case-insensitively
    assert write_graph(g, out, {"x": 0}) == out
    assert calls == [
        (["/opt/bin/dot", f"-T{fmt}", "-o", str(out)], to_dot(g, {"x": 0}).encode(), True)
    ]


def test_write_graph_unknown_format(tmp_path):
    with pytest.raises(GraphpartError, match=r"unknown format 'jpg'"):
        write_graph(mlp([4, 3, 2]), tmp_path / "g.jpg")
