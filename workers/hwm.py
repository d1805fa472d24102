"""A process's resident memory (Linux /proc): its high-water mark (VmHWM) and its parts."""

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


RSS_PARTS = ("RssAnon", "RssFile", "RssShmem")  # private memory, mapped files, shared memory


def read_rss_parts(pid: int | str = "self") -> dict[str, int]:
    """Resident bytes of `pid` by kind (Linux /proc status): RssAnon (the heap and anonymous
    maps: where tensors live), RssFile (pages of mapped files: library code first run) and
    RssShmem (shared memory: channel buffers, Ray's object store); {} where unknown."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in RSS_PARTS:
                    out[key] = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return {}
    return out
