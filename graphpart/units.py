"""Byte counts (human-readable, and parsed from text like '64MiB') and plain-text tables."""

import re
from typing import Any

from graphpart.errors import ConfigError


def human_bytes(n: float) -> str:
    """1536 -> '1.50 KiB'; whole bytes below 1 KiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"  # pragma: no cover


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    rule = ["-" * w for w in widths]
    return "\n".join([line(cells[0]), line(rule)] + [line(r) for r in cells[1:]])


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)
SIZE_FORMS = (
    "a number of bytes >= 0 with an optional unit: 12345, 12345B, 512KiB, 64MiB, 1.5 GiB, "
    "1TiB (1024-based) or 100MB, 2GB (1000-based, SI); units are case-insensitive"
)


def parse_bytes(text: str | int) -> int:
    """'64MiB' -> 67108864, '1.5 GiB', '100MB' (SI), '12345', '12345B'; an int passes through.

    KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB powers of 1000 (case-insensitive, spaces
    allowed); a fractional result is rounded to whole bytes. Anything else (negative, empty,
    unknown unit, nan, inf) raises ConfigError naming the value and the valid forms.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"memory size {text!r} is negative; use {SIZE_FORMS}")
        return int(text)
    if not isinstance(text, str):
        raise ConfigError(f"memory size {text!r} is not a string or integer; use {SIZE_FORMS}")
    m = _SIZE.fullmatch(text)
    if m is None or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"memory size {text!r} is invalid; use {SIZE_FORMS}")
    number, unit = m.groups()
    return round(float(number) * _UNITS[unit.lower()])
