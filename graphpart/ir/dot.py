"""Graphviz export: variables as boxes, operators as circles, optionally coloured by stage."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from graphpart.errors import GraphpartError

if TYPE_CHECKING:
    from graphpart.ir.graph import Graph

STAGE_COLOURS = (
    "#cfe2f3",
    "#d9ead3",
    "#fff2cc",
    "#f4cccc",
    "#d9d2e9",
    "#fce5cd",
    "#d0e0e3",
    "#ead1dc",
)
ROLE_STYLE = {"input": "#ffffff", "label": "#ffffff", "param": "#eeeeee", "value": "#ffffff"}


def _shape(shape: tuple) -> str:
    return " x ".join(str(d) for d in shape) if shape else "scalar"


def to_dot(graph: Graph, stage_of: Mapping[str, int] | None = None) -> str:
    """DOT text; `stage_of` maps variable and operator names to a stage index for colouring."""
    stage_of = stage_of or {}

    def fill(name: str, default: str) -> str:
        k = stage_of.get(name)
        return default if k is None else STAGE_COLOURS[k % len(STAGE_COLOURS)]

    lines = ["digraph graphpart {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for v in graph.vars:
        bold = ", penwidth=2" if v.role == "param" else ""
        label = f"{v.name}\\n{_shape(v.shape)}"
        colour = fill(v.name, ROLE_STYLE[v.role])
        lines.append(
            f'  "{v.name}" [shape=box, style=filled, fillcolor="{colour}", label="{label}"{bold}];'
        )
    for o in graph.ops:
        op_id = f"op:{o.name}"
        colour = fill(o.name, "#ffffff")
        lines.append(
            f'  "{op_id}" [shape=circle, style=filled, fillcolor="{colour}", '
            f'label="{o.op}", fontsize=10];'
        )
        for i in o.inputs:
            lines.append(f'  "{i}" -> "{op_id}";')
        lines.append(f'  "{op_id}" -> "{o.output}";')
    if stage_of:
        stages = sorted(set(stage_of.values()))
        lines.append('  subgraph cluster_legend { label="stages"; style=dashed;')
        for k in stages:
            colour = STAGE_COLOURS[k % len(STAGE_COLOURS)]
            lines.append(
                f'    "legend{k}" [shape=box, style=filled, fillcolor="{colour}", '
                f'label="stage {k}"];'
            )
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_graph(graph: Graph, out: str | Path, stage_of: Mapping[str, int] | None = None) -> Path:
    """Write DOT, or SVG/PNG/PDF (by the file's suffix) when Graphviz's `dot` is installed."""
    out = Path(out)
    dot_text = to_dot(graph, stage_of)
    fmt = out.suffix.lstrip(".").lower()
    if fmt in ("dot", "gv", ""):
        out.write_text(dot_text)
        return out
    if fmt not in ("svg", "png", "pdf"):
        raise GraphpartError(f"--out {out}: unknown format {fmt!r}; use .dot, .svg, .png or .pdf")
    exe = shutil.which("dot")
    if exe is None:
        raise GraphpartError(
            f"--out {out}: writing .{fmt} needs Graphviz's `dot` program, which is not installed "
            "(apt-get install graphviz); write a .dot file instead"
        )
    subprocess.run([exe, f"-T{fmt}", "-o", str(out)], input=dot_text.encode(), check=True)
    return out
