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


def check_out_file(out: str | Path, overwrite: bool = False, flag: str = "--out") -> Path:
    """`out` as a new file to write: its folder must exist, and an existing file is refused
    (a one-line GraphpartError naming it) unless `overwrite`; a folder is never a file."""
    out = Path(out)
    parent = out.parent
    if out.is_dir():
        raise GraphpartError(
            f"{flag} {out}: is a folder; give a file name, e.g. {out / 'graph.dot'}"
        )
    if not parent.exists():
        raise GraphpartError(
            f"{flag} {out}: folder {parent} does not exist; create it first or give another path"
        )
    if not parent.is_dir():
        raise GraphpartError(f"{flag} {out}: {parent} is not a folder")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise GraphpartError(
            f"{flag} {out}: the file already exists and is not overwritten; remove it, give "
            "another name, or pass --force"
        )
    return out


def write_graph(
    graph: Graph,
    out: str | Path,
    stage_of: Mapping[str, int] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write DOT, or SVG/PNG/PDF (by the file's suffix) when Graphviz's `dot` is installed.

    The folder must exist; an existing file is refused unless `overwrite`. If Graphviz fails,
    the half-written file is removed.
    """
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in ("dot", "gv", "", "svg", "png", "pdf"):
        raise GraphpartError(f"--out {out}: unknown format {fmt!r}; use .dot, .svg, .png or .pdf")
    check_out_file(out, overwrite)
    dot_text = to_dot(graph, stage_of)
    if fmt in ("dot", "gv", ""):
        try:
            with open(out, "w" if overwrite else "x") as f:
                f.write(dot_text)
        except FileExistsError:
            raise GraphpartError(
                f"--out {out}: the file already exists and is not overwritten"
            ) from None
        except OSError as exc:
            raise GraphpartError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
        return out
    exe = shutil.which("dot")
    if exe is None:
        raise GraphpartError(
            f"--out {out}: writing .{fmt} needs Graphviz's `dot` program, which is not installed "
            "(apt-get install graphviz); write a .dot file instead"
        )
    existed = out.exists()
    try:
        subprocess.run([exe, f"-T{fmt}", "-o", str(out)], input=dot_text.encode(), check=True)
    except BaseException:
        if not existed:
            out.unlink(missing_ok=True)
        raise
    return out
