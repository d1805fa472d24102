"""The names of a profiled run's workers: pipeline stages, replicas, or both (2-D)."""

from __future__ import annotations


def worker_name(index: int, stages: int, replicas: int, *, short: bool = False) -> str:
    """Worker `index` of R = `replicas` replicas of a K = `stages`-stage pipeline, as the
    engines number them (replica-major: index r K + k): "stage k" (R = 1), "replica r"
    (K = 1, R > 1), or "replica r, stage k" ("r0 s1" with `short`) for the 2-D layout."""
    r, k = divmod(int(index), max(1, int(stages)))
    if replicas <= 1:
        return f"stage {k}"
    if stages <= 1:
        return f"replica {r}"
    return f"r{r} s{k}" if short else f"replica {r}, stage {k}"


def worker_names(stages: int, replicas: int, *, short: bool = False) -> list[str]:
    """`worker_name` of every worker, in the engines' order (R x K of them)."""
    n = max(1, int(stages)) * max(1, int(replicas))
    return [worker_name(i, stages, replicas, short=short) for i in range(n)]
