"""A process's resident high-water mark (Linux VmHWM): read it, and reset it to the current RSS."""

from __future__ import annotations


def read_hwm(pid: int | str = "self") -> int | None:
    """Peak resident bytes of process `pid` since start or the last reset; None if unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_hwm(pid: int | str = "self") -> bool:
    """Reset the mark of `pid` to its current RSS; False where that is not possible."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return read_hwm(pid) is not None
