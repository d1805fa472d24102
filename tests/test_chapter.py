"""docs/chapter.md cannot drift from the code: every command in its console blocks runs, and
prints what the page shows.

Each `$ graphpart ...` line of a ```console block is run in-process (graphpart.cli.main, in an
empty folder) and must exit 0; its stdout must match the lines the page shows under it, token
by token: words exactly; runs of spaces and of table rule dashes (column widths follow the
widest, possibly timed, cell) read as one; on a line that reports a time (ms, us, "x time", a
pid, the measurement overhead) every number is masked. Numbers are compared as numbers, with
stated tolerances, never as text (figures depend on the BLAS and on rounding order): a
round-off-sized figure (the page's below ROUNDOFF = 1e-6, such as a symmetry check of 4.8e-16
or a relative error of 1.9e-10) matches any figure below ROUNDOFF, exactly 0 included; any
other figure matches within one unit of the last digit the page prints (5.13739 takes
5.13738..5.13740). A `...` line on the page stands for any number of lines. Commands that
take more than a few seconds (profile, the Hessian spectra) are in the slow lane (marked ray).
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
ROUNDOFF = 1e-6  # a figure the page prints below this is round-off: any such figure matches


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


def normalise(line: str) -> tuple[str, list[str]]:
    """The line's words with each number as "#" (a table's column widths follow its widest,
    possibly timed, cell: cells compared, not spaces), and its numbers as printed (none on a
    line that reports a time)."""
    line = line.rstrip()
    numbers = [] if any(v in line for v in VOLATILE) else NUMBER.findall(line)
    words = NUMBER.sub("#", line)
    return " ".join("-" if set(tok) == {"-"} else tok for tok in words.split()), numbers


def _value(text: str) -> float:
    return float(text.replace(",", ""))


def _unit(text: str) -> float:
    """One unit of the last digit `text` prints (5.13739: 1e-5; 1.9e-10: 1e-11; 2,060: 1)."""
    mantissa, _, exp = text.replace(",", "").lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exp or 0) - decimals)


def same_number(page: str, got: str) -> bool:
    """Whether `got` is the figure the page prints, within the stated tolerances."""
    p, g = _value(page), _value(got)
    if abs(p) < ROUNDOFF:
        return abs(g) < ROUNDOFF
    return abs(g - p) <= _unit(page) * (1 + 1e-9)


def same_line(page: tuple[str, list[str]], got: tuple[str, list[str]]) -> bool:
    (pw, pn), (gw, gn) = page, got
    return pw == gw and len(pn) == len(gn) and all(map(same_number, pn, gn))


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether `actual` is `expected` with each `...` line standing for any lines."""
    parts: list[list[tuple[str, list[str]]]] = [[]]
    for line in expected:
        if line.strip() == "...":
            parts.append([])
        else:
            parts[-1].append(normalise(line))
    got = [normalise(x) for x in actual]

    def at(pos: int, part: list) -> bool:
        return len(got) - pos >= len(part) and all(
            same_line(p, g) for p, g in zip(part, got[pos : pos + len(part)], strict=False)
        )

    if not at(0, parts[0]):
        return False
    pos = len(parts[0])
    if len(parts) == 1:
        return pos == len(got)
    for part in parts[1:-1]:
        while pos <= len(got) - len(part) and not at(pos, part):
            pos += 1
        if pos > len(got) - len(part):
            return False
        pos += len(part)
    last = parts[-1]
    return len(got) - pos >= len(last) and (not last or at(len(got) - len(last), last))


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
    assert matches(["symmetry 4.8e-16"], ["symmetry 0.0e+00"])  # round-off: exactly 0 too
    assert matches(["relative error 1.9e-10"], ["relative error 3.1e-10"])
    assert not matches(["err 1.8e-06"], ["err 3.0e-05"])
    assert matches(["k 5.13739"], ["k 5.13740"])  # one unit of the last printed digit
    assert not matches(["k 5.13739"], ["k 5.13741"])
    assert not matches(["samples 2,060"], ["samples 2,062"])
    assert not matches(["a 1 b"], ["a 1 c"]) and not matches(["a 1"], ["a 1 2"])
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
