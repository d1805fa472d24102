"""docs/chapter.md cannot drift from the code: every command in its console blocks runs, and
prints what the page shows.

Each `$ graphpart ...` line of a ```console block is run in-process (graphpart.cli.main, in an
empty folder) and must exit 0; its stdout must equal the lines the page shows under it, after
normalising what legitimately varies: runs of spaces and of table rule dashes (column widths
follow the widest, possibly timed, cell) read as one; on a line that reports a time (ms, us,
"x time", a pid, the measurement overhead) every number is masked, and a number in scientific
notation below 1e-6 (a round-off-sized check such as 1.8e-16, or exactly 0.0e+00) reads as
~0; a `...` line on the page stands for any number of lines. Commands that take more than a
few seconds (profile, the Hessian spectra) are in the slow lane (marked ray).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from graphpart.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "chapter.md"
VOLATILE = (" ms", " us", "x time", "pid", "overhead")
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
TINY = re.compile(r"\d(?:\.\d+)?e-(\d+)")
ZERO = re.compile(r"(?<![\d.])0(?:\.0+)?e[-+]0+\b")


def commands(text: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines shown under it) for every `$ ` line of the console blocks."""
    out: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            else:
                out[-1][1].append(line)
    return out


def normalise(line: str) -> str:
    line = ZERO.sub("~0", line.rstrip())  # a round-off-sized check can come out exactly 0
    line = TINY.sub(lambda m: "~0" if int(m.group(1)) > 6 else m.group(0), line)
    if any(v in line for v in VOLATILE):
        line = NUMBER.sub("#", line)
    # a table's column widths follow its widest (possibly timed) cell: compare cells, not spaces
    return " ".join("-" if set(tok) == {"-"} else tok for tok in line.split())


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether `actual` is `expected` with each `...` line standing for any lines."""
    parts: list[list[str]] = [[]]
    for line in expected:
        if line.strip() == "...":
            parts.append([])
        else:
            parts[-1].append(normalise(line))
    got = [normalise(x) for x in actual]
    if got[: len(parts[0])] != parts[0]:
        return False
    pos = len(parts[0])
    if len(parts) == 1:
        return pos == len(got)
    for part in parts[1:-1]:
        while pos <= len(got) - len(part) and got[pos : pos + len(part)] != part:
            pos += 1
        if pos > len(got) - len(part):
            return False
        pos += len(part)
    last = parts[-1]
    return len(got) - pos >= len(last) and (not last or got[-len(last) :] == last)


CASES = commands(PAGE.read_text())


def _slow(command: str) -> bool:
    return " profile" in command or (" hessian" in command and "--graph" not in command)


def test_the_page_has_every_exercise():
    text = PAGE.read_text()
    for k in range(1, 6):
        assert f"## {k}. " in text
    used = [c.split()[:2] for c, _ in CASES]
    for command in ("graph", "profile", "hessian", "plan"):
        assert ["graphpart", command] in used
    assert any("profile" in c and "--inference" in c for c, _ in CASES)


def test_matching_rules():
    assert matches(["a 1.2 ms", "...", "z"], ["a 3.4 ms", "b", "c", "z"])
    assert not matches(["a", "z"], ["a", "b", "z"])
    assert matches(["err 1.8e-16"], ["err 3.0e-15"])
    assert not matches(["err 1.8e-06"], ["err 3.0e-05"])
    assert not matches(["k 5.13739"], ["k 5.13740"])
    assert matches(["  time   2.1 ms", "----  ------"], ["time 12.15 ms", "--- --------"])


@pytest.mark.parametrize(
    ("command", "shown"),
    [pytest.param(c, s, id=c, marks=[pytest.mark.ray] if _slow(c) else []) for c, s in CASES],
)
def test_command_prints_what_the_page_shows(command, shown, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)
    assert argv[0] == "graphpart"
    assert main(argv[1:]) == 0
    out = capsys.readouterr().out.rstrip("\n").splitlines()
    assert matches(shown, out), "\n".join(["page:", *shown, "now:", *out])
