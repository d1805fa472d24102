"""Contract of workers/walk.py: the one walk over a step's actions.

Each (stage, action) becomes one call, in the order given: a forward calls `forward(mb, x,
labels, scale)` with x from `take` where it receives, else from `data(mb)`, and the labels only
where the action takes them; with `infer`, `infer(x)`; a backward calls `backward(mb,
take(...), scale)`, its input-gradient part ("I") `backward_input(mb, take(...), scale)`, its
weight-gradient part ("W") `backward_weight(mb, scale)` with no input. Every output goes to
`give` with its stage and action; an action kind without a stage method is a one-line error
naming it.
"""

from __future__ import annotations

import pytest

from workers.actions import StageAction
from workers.walk import walk


def _run(actions, infer=False):
    calls, given = [], []

    def call(k, a, method, *args):
        calls.append((k, method, *args))
        return f"{method}{k}.{a.mb}"

    walk(
        actions,
        call,
        data=lambda m: f"x{m}",
        take=lambda k, a: f"took{k}{a}",
        give=lambda k, a, out: given.append((k, str(a), out)),
        labels=lambda m: f"y{m}",
        scale=0.25,
        infer=infer,
    )
    return calls, given


def test_each_action_is_one_call_with_its_inputs():
    acts = [
        (0, StageAction("F", 0, receives=False, sends=True)),
        (1, StageAction("F", 0, receives=True, sends=False, labels=True)),
        (1, StageAction("B", 0, receives=False, sends=True)),
        (0, StageAction("B", 0, receives=True, sends=False)),
    ]
    calls, given = _run(acts)
    assert calls == [
        (0, "forward", 0, "x0", None, 0.25),
        (1, "forward", 0, "took1F0", "y0", 0.25),
        (1, "backward", 0, "took1B0", 0.25),
        (0, "backward", 0, "took0B0", 0.25),
    ]
    assert given == [
        (0, "F0", "forward0.0"),
        (1, "F0", "forward1.0"),
        (1, "B0", "backward1.0"),
        (0, "B0", "backward0.0"),
    ]


def test_inference_forwards_call_infer_with_the_input_only():
    acts = [(0, StageAction("F", 1, receives=False, sends=True))]
    acts.append((1, StageAction("F", 1, receives=True, sends=False)))
    calls, given = _run(acts, infer=True)
    assert calls == [(0, "infer", "x1"), (1, "infer", "took1F1")]
    assert [g[2] for g in given] == ["infer0.1", "infer1.1"]


def test_split_backwards_call_their_halves():
    acts = [
        (1, StageAction("I", 0, receives=False, sends=True)),
        (0, StageAction("I", 0, receives=True, sends=False)),
        (1, StageAction("W", 0, receives=False, sends=False)),
    ]
    calls, given = _run(acts)
    assert calls == [
        (1, "backward_input", 0, "took1I0", 0.25),
        (0, "backward_input", 0, "took0I0", 0.25),
        (1, "backward_weight", 0, 0.25),
    ]
    assert [g[1:] for g in given][-1] == ("W0", "backward_weight1.0")


def test_an_unknown_action_kind_is_named():
    with pytest.raises(ValueError, match="kind 'X'"):
        _run([(0, StageAction("X", 2, receives=False, sends=False))])
