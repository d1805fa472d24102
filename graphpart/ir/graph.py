"""The graph IR: variables and operators as immutable records in topological order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from graphpart.errors import GraphError
from graphpart.ir.ops import REGISTRY

BATCH = "B"  # the symbolic batch dimension
ROLES = ("input", "label", "param", "value")

Dim = int | str
Shape = tuple[Dim, ...]


@dataclass(frozen=True)
class Var:
    """A variable (a box in the textbook picture): input, label, parameter or computed value."""

    name: str
    role: str
    shape: Shape
    layer: int = 0  # the layer it belongs to; layers are the units the partitioner moves

    @property
    def is_param(self) -> bool:
        return self.role == "param"

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    def __str__(self) -> str:
        dims = " x ".join(str(d) for d in self.shape) or "scalar"
        return f"{self.name} [{self.role}] {dims}"


@dataclass(frozen=True)
class Op:
    """An operator (a circle in the textbook picture): reads variables, writes one variable."""

    name: str
    op: str
    inputs: tuple[str, ...]
    output: str
    layer: int = 0
    attrs: tuple[tuple[str, Any], ...] = ()

    def attr(self, key: str, default: Any = None) -> Any:
        return dict(self.attrs).get(key, default)

    def __str__(self) -> str:
        return f"{self.output} = {self.op}({', '.join(self.inputs)})"


@dataclass(frozen=True)
class Graph:
    """A computational graph: variables and operators, operators in topological order.

    `output` is the scalar being minimised (J); `loss` is the data-loss node (L).
    `info` records how the graph was built (sizes, activation, ...), for reports.
    """

    vars: tuple[Var, ...]
    ops: tuple[Op, ...]
    output: str = "J"
    loss: str = "L"
    info: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    # -- lookup ---------------------------------------------------------------
    def var(self, name: str) -> Var:
        for v in self.vars:
            if v.name == name:
                return v
        raise GraphError(f"no variable named {name!r}; variables are {', '.join(self.names)}")

    def __getitem__(self, name: str) -> Var:
        return self.var(name)

    def __contains__(self, name: object) -> bool:
        return any(v.name == name for v in self.vars)

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.vars]

    @property
    def params(self) -> list[Var]:
        return [v for v in self.vars if v.role == "param"]

    @property
    def inputs(self) -> list[Var]:
        return [v for v in self.vars if v.role == "input"]

    @property
    def labels(self) -> list[Var]:
        return [v for v in self.vars if v.role == "label"]

    @property
    def layers(self) -> list[int]:
        """Layer indices in order (the units a partition may cut between)."""
        return sorted({o.layer for o in self.ops if o.layer > 0})

    def producer(self, name: str) -> Op | None:
        for o in self.ops:
            if o.output == name:
                return o
        return None

    def consumers(self, name: str) -> list[Op]:
        return [o for o in self.ops if name in o.inputs]

    def get_info(self, key: str, default: Any = None) -> Any:
        return dict(self.info).get(key, default)

    # -- checks ---------------------------------------------------------------
    def validate(self) -> Graph:
        """Check names, topological order, op names and shapes; raise GraphError naming the node."""
        seen: dict[str, Var] = {}
        for v in self.vars:
            if v.name in seen:
                raise GraphError(f"variable {v.name!r} is declared twice")
            if v.role not in ROLES:
                raise GraphError(f"variable {v.name!r} has role {v.role!r}; valid: {ROLES}")
            for d in v.shape:
                if not (d == BATCH or (isinstance(d, int) and d > 0)):
                    raise GraphError(
                        f"variable {v.name!r} has dimension {d!r}; dimensions are positive "
                        f"integers or {BATCH!r}"
                    )
            seen[v.name] = v
        defined = {v.name for v in self.vars if v.role != "value"}
        produced: set[str] = set()
        later = {o.output: i for i, o in enumerate(self.ops)}
        for i, o in enumerate(self.ops):
            if o.op not in REGISTRY:
                raise GraphError(
                    f"operator {o.name!r} uses unknown op {o.op!r}; known ops: "
                    f"{', '.join(sorted(REGISTRY))}"
                )
            for name in o.inputs:
                if name in defined:
                    continue
                if name in later and later[name] >= i:
                    raise GraphError(
                        f"operator {o.name!r} reads {name!r}, which is produced later by "
                        f"{self.ops[later[name]].name!r}: the graph has a cycle or is not in "
                        "topological order"
                    )
                raise GraphError(f"operator {o.name!r} reads {name!r}, which nothing defines")
            if o.output not in seen:
                raise GraphError(f"operator {o.name!r} writes undeclared variable {o.output!r}")
            if seen[o.output].role != "value":
                raise GraphError(
                    f"operator {o.name!r} writes {o.output!r}, {_article(seen[o.output].role)}; "
                    "operators may only write values"
                )
            if o.output in produced:
                raise GraphError(f"variable {o.output!r} is written by two operators")
            produced.add(o.output)
            defined.add(o.output)
            opdef = REGISTRY[o.op]
            in_shapes = [seen[n].shape for n in o.inputs]
            try:
                shape = opdef.shape(in_shapes, dict(o.attrs))
            except GraphError as e:
                raise GraphError(f"operator {o.name!r} ({o}): {e}") from None
            if tuple(shape) != tuple(seen[o.output].shape):
                raise GraphError(
                    f"operator {o.name!r} ({o}) gives shape {_fmt(shape)} but {o.output!r} is "
                    f"declared {_fmt(seen[o.output].shape)}"
                )
        for v in self.vars:
            if v.role == "value" and v.name not in produced:
                raise GraphError(f"value {v.name!r} is declared but no operator writes it")
        if self.output not in seen:
            raise GraphError(f"graph output {self.output!r} is not a variable")
        if seen[self.output].shape != ():
            raise GraphError(f"graph output {self.output!r} must be a scalar")
        return self

    # -- display --------------------------------------------------------------
    def __str__(self) -> str:
        lines = []
        for v in self.vars:
            if v.role != "value":
                lines.append(f"  {v}")
        for o in self.ops:
            lines.append(f"  {o}    -> {_fmt(self.var(o.output).shape)}  (layer {o.layer})")
        return "Graph\n" + "\n".join(lines)


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _fmt(shape: Iterable[Dim]) -> str:
    shape = tuple(shape)
    return "(" + ", ".join(str(d) for d in shape) + ")" if shape else "scalar"
