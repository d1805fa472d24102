"""The executor's kernels as the op registry declares them: kernel keys and operands by role."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Operand roles a Call may name (resolved per op by graphpart.ir.lower):
#   "in0", "in1", ...   an input's value         "out"      the op's output value
#   "d_in0", "d_out"    their cotangents (a parameter input's: its gradient)
#   "in*", "d_in*"      each input, for a `step` call made once per input
#   "next.<role>"       a role of the op fused after this one (`Kernels.fuses`)
#   "code"              the op's `Kernels.code`
#   "attr.<name>"       an attribute of the op, as a float
#   "scale"             the micro-batch's loss scale
#   "beta", "accumulate"  whether the parameter gradient the call writes already holds a value
#                       this step: 0.0 / 1.0 (a gemm's beta) or False / True


@dataclass(frozen=True)
class Call:
    """One kernel call: `key` into a backend's kernel table (workers/kernels/*.KERNELS) and its
    arguments by role, in the kernel's order."""

    key: str
    args: tuple[str, ...]
    # a weight-gradient call that can run in row blocks of the gradient it writes: the roles
    # sliced on their last axis with each block (dW[a:b] = dz[:, a:b]^T x for a matmul)
    splits: tuple[str, ...] = ()

    def writes(self) -> str | None:
        """The cotangent role the call writes (its last "d_..." argument), if any."""
        grads = [a for a in self.args if a.startswith("d_")]
        return grads[-1] if grads else None


@dataclass(frozen=True)
class Kernels:
    """An op's kernels, by role, for the executor (workers/program.py) and its lowering.

    forward: writes the output (a loss's returns the loss, accumulated in float64).
    weight_grads, input_grads: backward, run in that order; each writes one cotangent.
    fuses: the op right after this one (its only consumer) -> one call running both forwards.
    in_place: the cotangent of input 0 shares the output cotangent's buffer (an elementwise
        gradient written over its incoming cotangent; none at all when it is the identity).
    code: the constant a kernel shared by several ops branches on (an activation's code).
    step: a call made once per step for each input (not per micro-batch), returning its part
        of the objective; `enabled_by` names the attribute whose 0 leaves it out.
    """

    forward: Call | None = None
    weight_grads: tuple[Call, ...] = ()
    input_grads: tuple[Call, ...] = ()
    fuses: Mapping[str, Call] = field(default_factory=lambda: MappingProxyType({}))
    in_place: bool = False
    code: int | None = None
    step: Call | None = None
    enabled_by: str | None = None

    def keys(self) -> tuple[str, ...]:
        """Every kernel key the op names (each backend's table must hold them all)."""
        calls = [self.forward, *self.weight_grads, *self.input_grads, self.step]
        calls += list(self.fuses.values())
        return tuple(dict.fromkeys(c.key for c in calls if c is not None))
