"""Contract of graphpart.ir.ops, the op registry.

Every op in REGISTRY (matmul, bias_add, identity, relu, sigmoid, tanh, cross_entropy, mse, l2,
add) declares: a shape rule (symbolic batch passes through; mismatches raise GraphError naming
the shapes), a reference forward equal to the direct NumPy formula (batch-major: matmul is
x W^T; losses are scaled by `scale`, default 1/B), a VJP equal to central finite differences
of <g, forward> (float64, 1e-6 relative), FLOP counts (matmul: 2*B*n*m forward, twice that
backward) and a `saves` declaration that is sufficient: the VJP gives the same result when
handed only the declared saved tensors (inputs not declared and an undeclared output are None).
Forward mode: every op's JVP equals central differences of its forward, and its `vjp_jvp` (the
tangent of the VJP) central differences of the VJP, handed only the declared `saves` and
`tangent_saves`; a None tangent reads as zero. The cases are generated for every activation of
the registry (values away from 0 unless it has its own); the forward is compared with a
formula written here for the ops listed in DIRECT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from graphpart.errors import GraphError
from graphpart.ir.ops import ACT_CODE, ACTIVATIONS, LOSSES, REGISTRY, get

B_ = 5  # concrete batch used for numeric checks


@dataclass
class Case:
    """Inputs for one op: arrays, which inputs are differentiable, attrs and shapes."""

    make: object  # rng -> list of input arrays
    diff: tuple[bool, ...]  # differentiable inputs (labels are not)
    attrs: dict = field(default_factory=dict)


def _away_from_zero(rng, shape):
    """Values with |v| in [0.2, 2]: no relu kink within finite-difference reach."""
    return rng.uniform(0.2, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


CASES: dict[str, Case] = {
    "matmul": Case(lambda r: [r.standard_normal((B_, 4)), r.standard_normal((3, 4))], (True, True)),
    "bias_add": Case(lambda r: [r.standard_normal((B_, 3)), r.standard_normal(3)], (True, True)),
    "identity": Case(lambda r: [r.standard_normal((B_, 3))], (True,)),
    "relu": Case(lambda r: [_away_from_zero(r, (B_, 3))], (True,)),
    "sigmoid": Case(lambda r: [2 * r.standard_normal((B_, 3))], (True,)),
    "tanh": Case(lambda r: [r.standard_normal((B_, 3))], (True,)),
    "cross_entropy": Case(
        lambda r: [2 * r.standard_normal((B_, 4)), r.integers(0, 4, B_)], (True, False)
    ),
    "mse": Case(lambda r: [r.standard_normal((B_, 3)), r.standard_normal((B_, 3))], (True, False)),
    "l2": Case(
        lambda r: [r.standard_normal((3, 4)), r.standard_normal((2, 3)), r.standard_normal(2)],
        (True, True, True),
        {"weight_decay": 0.3},
    ),
    "add": Case(
        lambda r: [
            np.float64(r.standard_normal()),
            np.float64(r.standard_normal()),
            np.float64(r.standard_normal()),
        ],
        (True, True, True),
    ),
}


for _act in ACTIVATIONS:  # an activation without a case of its own: values away from kinks
    CASES.setdefault(_act, Case(lambda r: [_away_from_zero(r, (B_, 3))], (True,)))


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _log_softmax(o):
    m = o.max(axis=1, keepdims=True)
    return o - m - np.log(np.exp(o - m).sum(axis=1, keepdims=True))


def _direct(name, ins, attrs):
    """The op's mathematical definition, written independently of graphpart.ir.ops."""
    if name == "matmul":
        x, w = ins
        return np.einsum("bi,oi->bo", x, w)
    if name == "bias_add":
        return ins[0] + ins[1][None, :]
    if name == "identity":
        return ins[0]
    if name == "relu":
        return np.where(ins[0] > 0, ins[0], 0.0)
    if name == "sigmoid":
        return _sigmoid(ins[0])
    if name == "tanh":
        return np.tanh(ins[0])
    if name == "cross_entropy":
        o, y = ins
        scale = attrs.get("scale", 1.0 / len(y))
        return -scale * sum(_log_softmax(o)[i, y[i]] for i in range(len(y)))
    if name == "mse":
        o, t = ins
        scale = attrs.get("scale", 1.0 / len(o))
        return scale * 0.5 * np.sum((o - t) ** 2)
    if name == "l2":
        return 0.5 * attrs.get("weight_decay", 0.0) * sum(np.sum(w * w) for w in ins)
    if name == "add":
        return sum(ins)
    raise AssertionError(name)


OPS = sorted(CASES)
# ops with a definition written out in _direct (a new op is checked against finite differences,
# its kernels against its reference forward)
DIRECT = ["matmul", "bias_add", "identity", "relu", "sigmoid", "tanh", *LOSSES, "l2", "add"]


def _call_fwd(name, ins, attrs):
    return REGISTRY[name].forward([np.array(a, copy=True) for a in ins], dict(attrs))


def test_registry_is_covered():
    assert set(REGISTRY) == set(CASES), "every registered op needs a case in this file"
    assert set(ACTIVATIONS) | set(LOSSES) | {"matmul", "bias_add", "l2", "add"} == set(REGISTRY)
    for name, opdef in REGISTRY.items():
        assert opdef.name == name
        assert get(name) is opdef


def test_get_unknown_op():
    with pytest.raises(GraphError, match=r"unknown op 'softmax'.*matmul"):
        get("softmax")


def test_kinds_and_arity():
    assert {n for n, d in REGISTRY.items() if d.kind == "loss"} == set(LOSSES)
    assert {n for n, d in REGISTRY.items() if d.kind == "scalar"} == {"l2", "add"}
    assert REGISTRY["matmul"].arity == 2 and REGISTRY["relu"].arity == 1
    assert REGISTRY["l2"].arity is None and REGISTRY["add"].arity is None


# -- shape rules ----------------------------------------------------------------------------------


def test_shape_rules_with_symbolic_batch():
    s = lambda name, *shapes, **a: REGISTRY[name].shape(list(shapes), a)  # noqa: E731
    assert s("matmul", ("B", 4), (3, 4)) == ("B", 3)
    assert s("matmul", (7, 4), (3, 4)) == (7, 3)
    assert s("bias_add", ("B", 3), (3,)) == ("B", 3)
    for act in ACTIVATIONS:
        assert s(act, ("B", 6)) == ("B", 6)
    assert s("cross_entropy", ("B", 4), ("B",)) == ()
    assert s("mse", ("B", 3), ("B", 3)) == ()
    assert s("l2", (3, 4), (2, 3), weight_decay=0.1) == ()
    assert s("l2") == ()  # no weights (a stage whose weights are all elsewhere)
    assert s("add", (), ()) == ()
    assert s("add", ()) == ()
    assert s("add", ("B", 2), ("B", 2), ("B", 2)) == ("B", 2)


@pytest.mark.parametrize(
    ("name", "shapes", "attrs", "msg"),
    [
        ("matmul", [("B", 4), (3, 5)], {}, r"input has 4 features but the weight expects 5"),
        ("matmul", [("B",), (3, 5)], {}, r"2-D operands"),
        ("matmul", [("B", 4), (4,)], {}, r"2-D operands"),
        ("bias_add", [("B", 3), (4,)], {}, r"\(B, 3\) and \(4,?\)"),
        ("bias_add", [("B", 3), (3, 1)], {}, r"bias_add needs"),
        ("cross_entropy", [("B", 4), ("B", 4)], {}, r"labels \(B,\)"),
        ("cross_entropy", [("B", 4), (3,)], {}, r"cross_entropy needs"),
        ("mse", [("B", 4), ("B", 3)], {}, r"same \(B, q\) shape.*\(B, 4\).*\(B, 3\)"),
        ("mse", [("B",), ("B",)], {}, r"mse needs"),
        ("l2", [(3, 4)], {"weight_decay": -0.5}, r"weight_decay=-0.5"),
        ("l2", [(3, 4)], {"weight_decay": float("nan")}, r"weight_decay=nan"),
        ("l2", [(3, 4)], {"weight_decay": "1"}, r"weight_decay='1'"),
        ("add", [(), ("B", 2)], {}, r"one shape.*\(\).*\(B, 2\)"),
    ],
)
def test_shape_rule_errors(name, shapes, attrs, msg):
    with pytest.raises(GraphError, match=msg):
        REGISTRY[name].shape(shapes, attrs)


@pytest.mark.parametrize("name", OPS)
def test_forward_shape_agrees_with_shape_rule(name):
    rng = np.random.default_rng(1)
    case = CASES[name]
    ins = case.make(rng)
    out = _call_fwd(name, ins, case.attrs)
    rule = REGISTRY[name].shape([np.shape(a) for a in ins], case.attrs)
    assert np.shape(out) == tuple(rule)


# -- forward --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIRECT)
def test_forward_matches_direct_formula(name):
    rng = np.random.default_rng(2)
    case = CASES[name]
    ins = case.make(rng)
    got = _call_fwd(name, ins, case.attrs)
    np.testing.assert_allclose(got, _direct(name, ins, case.attrs), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_scale_attribute(name):
    rng = np.random.default_rng(3)
    ins = CASES[name].make(rng)
    default = _call_fwd(name, ins, {})
    scaled = _call_fwd(name, ins, {"scale": 0.125})
    np.testing.assert_allclose(scaled, default * B_ * 0.125, rtol=1e-13)
    np.testing.assert_allclose(scaled, _direct(name, ins, {"scale": 0.125}), rtol=1e-13)


def test_forward_does_not_modify_inputs():
    rng = np.random.default_rng(4)
    for name in OPS:
        case = CASES[name]
        ins = case.make(rng)
        before = [np.array(a, copy=True) for a in ins]
        REGISTRY[name].forward(ins, dict(case.attrs))
        for a, b in zip(ins, before, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_identity_returns_a_copy():
    z = np.arange(6.0).reshape(2, 3)
    h = REGISTRY["identity"].forward([z], {})
    assert not np.shares_memory(h, z)
    np.testing.assert_array_equal(h, z)


def test_sigmoid_and_losses_are_stable_for_large_inputs():
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        z = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]])
        np.testing.assert_allclose(
            REGISTRY["sigmoid"].forward([z], {}),
            [[0.0, _sigmoid(-50.0), 0.5, _sigmoid(50.0), 1.0]],
            atol=1e-15,
        )
        o = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
        y = np.array([0, 2])
        loss = REGISTRY["cross_entropy"].forward([o, y], {})
        np.testing.assert_allclose(loss, 0.5 * (0.0 + np.log(3.0)), rtol=1e-13)
        g = REGISTRY["cross_entropy"].vjp(np.float64(1.0), [o, y], None, {}, [True, False])[0]
        assert np.all(np.isfinite(g))


def test_forward_dtypes():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((B_, 4)).astype(np.float32)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    assert REGISTRY["matmul"].forward([x, w], {}).dtype == np.float32
    for act in ACTIVATIONS:
        assert REGISTRY[act].forward([x], {}).dtype == np.float32, act
    s = REGISTRY["l2"].forward([w], {"weight_decay": 1.0})
    np.testing.assert_allclose(s, 0.5 * np.sum(w.astype(np.float64) ** 2), rtol=1e-15)


# -- VJPs -----------------------------------------------------------------------------------------


def _vjp(name, g, ins, attrs, needs=None, only_saved=False):
    opdef = REGISTRY[name]
    out = _call_fwd(name, ins, attrs)
    if needs is None:
        needs = CASES[name].diff
    if only_saved:
        keep = set(opdef.saved_inputs(len(ins)))
        ins = [a if i in keep else None for i, a in enumerate(ins)]
        out = out if opdef.saves_output else None
    return opdef.vjp(g, ins, out, dict(attrs), list(needs))


def _cotangent(rng, out):
    shape = np.shape(out)
    return rng.standard_normal(shape) if shape else np.float64(rng.standard_normal())


def _finite_difference(name, ins, attrs, g, k, eps=1e-6):
    """d<g, f(ins)>/d ins[k] by central differences, element by element."""
    base = np.array(ins[k], dtype=np.float64, copy=True)
    grad = np.zeros_like(base)
    flat = grad.reshape(-1)
    for j in range(base.size):
        vals = []
        for sign in (1.0, -1.0):
            pert = base.copy().reshape(-1)
            pert[j] += sign * eps
            args = list(ins)
            args[k] = pert.reshape(base.shape) if base.shape else np.float64(pert[0])
            vals.append(float(np.sum(g * _call_fwd(name, args, attrs))))
        flat[j] = (vals[0] - vals[1]) / (2 * eps)
    return grad


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", OPS)
def test_vjp_matches_finite_differences(name, seed):
    rng = np.random.default_rng(100 + seed)
    case = CASES[name]
    ins = case.make(rng)
    g = _cotangent(rng, _call_fwd(name, ins, case.attrs))
    grads = _vjp(name, g, ins, case.attrs)
    assert len(grads) == len(ins)
    for k, diff in enumerate(case.diff):
        if not diff:
            assert grads[k] is None, f"{name}: input {k} is a label"
            continue
        assert np.shape(grads[k]) == np.shape(ins[k]), (name, k)
        fd = _finite_difference(name, ins, case.attrs, g, k)
        assert _rel_err(grads[k], fd) < 1e-6, (name, k, grads[k], fd)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_vjp_with_custom_scale(name):
    rng = np.random.default_rng(7)
    ins = CASES[name].make(rng)
    attrs = {"scale": 1.0 / 17}
    g = np.float64(1.5)
    got = _vjp(name, g, ins, attrs)[0]
    assert _rel_err(got, _finite_difference(name, ins, attrs, g, 0)) < 1e-6


def test_vjp_closed_forms():
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((B_, 4)), rng.standard_normal((3, 4))
    g = rng.standard_normal((B_, 3))
    dx, dw = _vjp("matmul", g, [x, w], {})
    np.testing.assert_allclose(dx, g @ w, rtol=1e-14)
    np.testing.assert_allclose(dw, g.T @ x, rtol=1e-14)
    o, y = rng.standard_normal((B_, 4)), rng.integers(0, 4, B_)
    p = np.exp(_log_softmax(o))
    do = _vjp("cross_entropy", np.float64(1.0), [o, y], {})[0]
    np.testing.assert_allclose(do, (p - np.eye(4)[y]) / B_, rtol=1e-12, atol=1e-15)
    t = rng.standard_normal((B_, 4))
    np.testing.assert_allclose(
        _vjp("mse", np.float64(1.0), [o, t], {})[0], (o - t) / B_, rtol=1e-14
    )
    ws = [rng.standard_normal((3, 4)), rng.standard_normal((2, 3))]
    dws = _vjp("l2", np.float64(2.0), ws, {"weight_decay": 0.3}, needs=[True, True])
    for dwi, wi in zip(dws, ws, strict=True):
        np.testing.assert_allclose(dwi, 2.0 * 0.3 * wi, rtol=1e-14)


@pytest.mark.parametrize("name", OPS)
def test_saves_declaration_is_sufficient(name):
    rng = np.random.default_rng(9)
    case = CASES[name]
    ins = case.make(rng)
    g = _cotangent(rng, _call_fwd(name, ins, case.attrs))
    full = _vjp(name, g, ins, case.attrs)
    lean = _vjp(name, g, ins, case.attrs, only_saved=True)
    for a, b in zip(full, lean, strict=True):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_saves_declarations():
    assert REGISTRY["matmul"].saves == ("in0", "in1")
    assert REGISTRY["matmul"].saved_inputs(2) == [0, 1] and not REGISTRY["matmul"].saves_output
    assert REGISTRY["bias_add"].saved_inputs(2) == [] and not REGISTRY["bias_add"].saves_output
    for act in ACT_CODE:  # these activations differentiate from their output: only h is cached
        assert REGISTRY[act].saved_inputs(1) == [] and REGISTRY[act].saves_output, act
    for loss in LOSSES:
        assert REGISTRY[loss].saved_inputs(2) == [0, 1], loss
    assert REGISTRY["l2"].saved_inputs(3) == [0, 1, 2]
    assert REGISTRY["add"].saved_inputs(3) == []


@pytest.mark.parametrize("name", ["matmul", "bias_add", "l2", "add"])
def test_vjp_skips_inputs_not_needed(name):
    rng = np.random.default_rng(10)
    case = CASES[name]
    ins = case.make(rng)
    g = _cotangent(rng, _call_fwd(name, ins, case.attrs))
    n = len(ins)
    for skip in range(n):
        needs = [i != skip for i in range(n)]
        out = _vjp(name, g, ins, case.attrs, needs=needs)
        assert out[skip] is None
        assert all(out[i] is not None for i in range(n) if i != skip)


# -- FLOPs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "n", "m"), [(1, 1, 1), (8, 5, 3), (256, 784, 1024)])
def test_matmul_flops(b, n, m):
    fwd, bwd = REGISTRY["matmul"].flops([(b, n), (m, n)], (b, m))
    assert fwd == 2 * b * n * m
    assert bwd == 2 * fwd  # dx and dW, each a product of the same size


@pytest.mark.parametrize("name", OPS)
def test_flops_are_non_negative_integers_linear_in_batch(name):
    rng = np.random.default_rng(11)
    case = CASES[name]
    ins = case.make(rng)
    out_shape = np.shape(_call_fwd(name, ins, case.attrs))
    opdef = REGISTRY[name]

    def at(batch):
        def resize(s):
            return (batch, *s[1:]) if len(s) and s[0] == B_ and name not in ("l2",) else s

        in_shapes = [resize(np.shape(a)) for a in ins]
        return opdef.flops(in_shapes, resize(out_shape))

    f1, b1 = at(1)
    f2, b2 = at(2)
    for v in (f1, b1, f2, b2):
        assert isinstance(v, int | np.integer) and v >= 0, (name, v)
    if name in ("l2", "add"):  # per step / scalar ops: independent of the batch
        assert (f1, b1) == (f2, b2)
    else:
        assert (f2, b2) == (2 * f1, 2 * b1), name


def test_elementwise_flops_scale_with_elements():
    for act, per in {"identity": 0, "relu": 1, "sigmoid": 4, "tanh": 4}.items():
        fwd, bwd = REGISTRY[act].flops([(8, 3)], (8, 3))
        assert fwd == per * 24 and bwd >= fwd, act
    assert REGISTRY["bias_add"].flops([(8, 3), (3,)], (8, 3)) == (24, 24)
    assert REGISTRY["l2"].flops([(3, 4), (2, 3)], ()) == (36, 36)
    assert REGISTRY["add"].flops([(), (), ()], ()) == (2, 0)


# -- forward mode: jvp and the tangent of the VJP (vjp_jvp), beside each VJP ----------------------
# Contract: every op declares `jvp` and `vjp_jvp`; the JVP equals central differences of the
# forward along random input tangents, and `vjp_jvp` equals central differences of the VJP along
# (inputs + t tangents, g + t dg), both handed only what `saves` / `tangent_saves` declare;
# a None tangent reads as zero (the rule with it equals the rule with zeros).


def _tangents(rng, case, ins):
    return [
        rng.standard_normal(np.shape(a)) if d else None for a, d in zip(ins, case.diff, strict=True)
    ]


def _shift(ins, dins, t):
    return [a if d is None else a + t * d for a, d in zip(ins, dins, strict=True)]


def _declared(opdef, ins, out, dins, dout):
    n = len(ins)
    keep, tkeep = set(opdef.saved_inputs(n)), set(opdef.tangent_inputs(n))
    return (
        [a if i in keep else None for i, a in enumerate(ins)],
        out if opdef.saves_output else None,
        [d if i in tkeep else None for i, d in enumerate(dins)],
        dout if opdef.tangent_output else None,
    )


def test_every_op_declares_forward_mode():
    for name, opdef in REGISTRY.items():
        assert callable(opdef.jvp) and callable(opdef.vjp_jvp), name


@pytest.mark.parametrize("name", OPS)
def test_jvp_matches_finite_differences(name):
    rng = np.random.default_rng(11)
    case = CASES[name]
    opdef = REGISTRY[name]
    ins = case.make(rng)
    dins = _tangents(rng, case, ins)
    out = _call_fwd(name, ins, case.attrs)
    got = opdef.jvp(dins, ins, out, dict(case.attrs))
    eps = 1e-6
    fd = (
        np.asarray(_call_fwd(name, _shift(ins, dins, eps), case.attrs))
        - np.asarray(_call_fwd(name, _shift(ins, dins, -eps), case.attrs))
    ) / (2 * eps)
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", OPS)
def test_vjp_jvp_matches_finite_differences_of_the_vjp(name):
    rng = np.random.default_rng(12)
    case = CASES[name]
    opdef = REGISTRY[name]
    ins = case.make(rng)
    dins = _tangents(rng, case, ins)
    out = _call_fwd(name, ins, case.attrs)
    dout = opdef.jvp(dins, ins, out, dict(case.attrs))
    g = rng.standard_normal(np.shape(out))
    dg = rng.standard_normal(np.shape(out))
    needs = list(case.diff)
    s_ins, s_out, s_dins, s_dout = _declared(opdef, ins, out, dins, dout)
    got = opdef.vjp_jvp(g, dg, s_ins, s_dins, s_out, s_dout, dict(case.attrs), needs)
    eps = 1e-6

    def vjp_at(t):
        x = _shift(ins, dins, t)
        o = _call_fwd(name, x, case.attrs)
        keep = set(opdef.saved_inputs(len(x)))
        xs = [a if i in keep else None for i, a in enumerate(x)]
        return opdef.vjp(g + t * dg, xs, o if opdef.saves_output else None, dict(case.attrs), needs)

    plus, minus = vjp_at(eps), vjp_at(-eps)
    for i, d in enumerate(case.diff):
        if not d:
            assert got[i] is None
            continue
        fd = (np.asarray(plus[i]) - np.asarray(minus[i])) / (2 * eps)
        np.testing.assert_allclose(got[i], fd, rtol=1e-6, atol=1e-8, err_msg=f"input {i}")


@pytest.mark.parametrize("name", OPS)
def test_none_tangent_is_zero(name):
    rng = np.random.default_rng(13)
    case = CASES[name]
    opdef = REGISTRY[name]
    ins = case.make(rng)
    out = _call_fwd(name, ins, case.attrs)
    none = [None] * len(ins)
    zeros = [np.zeros(np.shape(a)) if d else None for a, d in zip(ins, case.diff, strict=True)]
    assert opdef.jvp(none, ins, out, dict(case.attrs)) is None
    np.testing.assert_array_equal(opdef.jvp(zeros, ins, out, dict(case.attrs)), 0.0)
    g = rng.standard_normal(np.shape(out))
    needs = list(case.diff)
    a = opdef.vjp_jvp(g, None, ins, none, out, None, dict(case.attrs), needs)
    b = opdef.vjp_jvp(
        g, np.zeros_like(g), ins, zeros, out, np.zeros(np.shape(out)), dict(case.attrs), needs
    )
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(0.0 if x is None else x, 0.0 if y is None else y)
