"""Contract of graphpart.units.parse_bytes: memory sizes written by people.

KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB powers of 1000, B or no unit is bytes;
units are case-insensitive, spaces around the number and unit are allowed, fractions round to
whole bytes, and an int passes through. Anything else (negative, empty, an unknown unit, nan,
inf, a bool, a float) raises ConfigError naming the value and the valid forms.
"""

from __future__ import annotations

import pytest

from graphpart.errors import ConfigError
from graphpart.units import human_bytes, parse_bytes


@pytest.mark.parametrize(
    "text,want",
    [
        ("64MiB", 64 * 2**20),
        ("1.5 GiB", 3 * 2**29),
        ("512KiB", 512 * 1024),
        ("100MB", 100_000_000),
        ("2GB", 2_000_000_000),
        ("1TiB", 2**40),
        ("3 tb", 3 * 10**12),
        ("12345", 12345),
        ("12345B", 12345),
        ("12345 b", 12345),
        ("  64 mib ", 64 * 2**20),
        ("64MIB", 64 * 2**20),
        ("2kb", 2000),
        ("0", 0),
        (".5KiB", 512),
        ("1.", 1),
        ("0.1KiB", 102),  # 102.4 rounds to whole bytes
        (12345, 12345),
        (0, 0),
    ],
)
def test_valid_sizes(text, want):
    got = parse_bytes(text)
    assert got == want and isinstance(got, int)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "-1",
        "-64MiB",
        "64 XB",
        "64 MiBs",
        "nan",
        "inf",
        "1e9",
        "MiB",
        "1..5GB",
        "64 M iB",
        "1,000",
        -5,
        True,
        1.5,
        None,
    ],
)
def test_invalid_sizes_name_the_value_and_the_forms(bad):
    with pytest.raises(ConfigError) as err:
        parse_bytes(bad)
    msg = str(err.value)
    assert repr(bad) in msg
    assert "64MiB" in msg and "100MB" in msg and "12345" in msg


def test_round_trip_with_human_bytes():
    for n in (0, 1023, 1536, 64 * 2**20, 3 * 2**29):
        text = human_bytes(n)
        assert abs(parse_bytes(text) - n) <= max(1, n * 0.005), text
