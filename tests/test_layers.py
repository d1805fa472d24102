"""The layering contract (pyproject.toml [tool.importlinter]) holds, and can fail.

Contract: import-linter finds every contract kept on this tree (layers in one direction, workers/
sees only the IR, optimizers, params and errors, only the engines import workers/, no import
cycles); the same check on a copy of the tree with one deliberate upward import (the IR
importing the training loop) reports a broken contract; no module of graphpart/ or workers/
imports the project's own modules inside a function (a hidden dependency), except the CUDA
kernels, which load only when a CUDA backend is made.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("graphpart", "workers")
LAZY_ALLOWED = {("workers/backends.py", "workers.kernels")}  # CUDA: numba.cuda loads on demand


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_every_contract_is_kept():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("KEPT") == 4 and "BROKEN" not in r.stdout


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_an_upward_import_breaks_the_layers(tmp_path):
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    graph = tmp_path / "graphpart" / "ir" / "graph.py"
    graph.write_text(graph.read_text() + "\nfrom graphpart.run import train  # noqa\n")
    r = _lint(tmp_path)
    assert r.returncode != 0
    assert "Layers: each imports only the layers below it BROKEN" in r.stdout
    assert "graphpart.ir.graph -> graphpart.run.train" in r.stdout


def _function_local_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [(node.lineno, n) for n in names if n.split(".")[0] in PACKAGES]
    return found


@pytest.mark.slow  # in process, but a second or more: the slow lane
@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_function_local_import_of_our_own_modules(pkg):
    bad = []
    for path in sorted((ROOT / pkg).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line, name in _function_local_imports(path):
            if (rel, name) not in LAZY_ALLOWED:
                bad.append(f"{rel}:{line} imports {name}")
    assert not bad, "\n".join(bad)
