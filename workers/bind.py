"""A lowered kernel call bound to its operands: one generated Python function a call, so a step
makes one Python call and the kernel's per call, with no per-operand dispatch."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from types import CodeType
from typing import Any

from graphpart.ir.lower import KernelCall
from workers.backends import Kernel

Run = Callable[[Any, dict, int, float], Any]  # (program, slot, rows, scale) -> result


# Each operand kind as an expression of (p: the program, slot, n: rows, sc: scale). Buffers are
# looked up (and allocated on first use) at call time, parameters and gradients by name (callers
# may swap the arrays held in `params` and `grads`).
_OPERAND: dict[str, str] = {
    "value": "p._value(slot, {name!r})[:n]",
    "param": "p.params[{name!r}]",
    "grad": "p._grad({name!r})[:n]",
    "param_grad": "p.grads[{name!r}]",
    "const": "{const!r}",
    "scale": "sc",
    "beta": "(0.0 if p.fresh[{name!r}] else 1.0)",
    "accumulate": "(not p.fresh[{name!r}])",
}
_PENDING = "slot[{key!r}][:n]"  # a cotangent held in the micro-batch's pending slot


def compile_call(call: KernelCall, kernel: Kernel, pending: Mapping[str, Any]) -> Run:
    """One function of (program, slot, rows, scale) making the call: its arguments written out
    from _OPERAND (names and constants as literals), so a step costs one Python call and the
    kernel's, with no per-operand dispatch; a written parameter gradient is no longer fresh.
    A cotangent named in `pending` is read from the slot under its key (a pending slot joined
    to the micro-batch's). A call of a row block [a, b) (KernelCall.rows) writes those rows
    of its gradient from its `splits` operands' columns [a, b); only the last block's marks the
    gradient written, so every block reads the same beta. The program is an argument, not
    captured: a Program and its calls form no reference cycle (a dropped Program is freed at
    once)."""
    parts = []
    for i, o in enumerate(call.operands):
        arg = (
            _PENDING.format(key=pending[o.name])
            if o.kind == "grad" and o.name in pending
            else _OPERAND[o.kind].format(name=o.name, const=o.const)
        )
        if call.rows is not None:  # a row block of the written gradient
            a, b = call.rows
            if i in call.splits:
                arg += f"[:, {a}:{b}]"
            elif o.kind == "param_grad" and o.name == call.param:
                arg += f"[{a}:{b}]"
        parts.append(arg)
    lines = ["def run(p, slot, n, sc):", f"    out = kernel({', '.join(parts)})"]
    if call.param is not None and call.last:
        lines.append(f"    p.fresh[{call.param!r}] = False")
    lines.append("    return out")
    scope: dict[str, Any] = {"kernel": kernel}
    exec(_code("\n".join(lines)), scope)  # noqa: S102 - literals only: names and numbers, repr'd
    return scope["run"]


@lru_cache(maxsize=4096)
def _code(source: str) -> CodeType:
    """The compiled module of a call's source (workers build the same calls many times)."""
    return compile(source, "<bound call>", "exec")
