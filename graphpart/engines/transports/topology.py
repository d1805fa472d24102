"""Channel topology: which neighbouring actors share a node, and the channels between them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.channels import ChannelName, unlink


@dataclass
class Links:
    """Shared-memory channels between actors on one node (neighbours on two nodes: none).

    `incoming[a]`: the channels actor a reads (it creates them); `to[a][b]`: the channel actor a
    writes to reach b; `local[e]`: whether edge e's two ends share a node; `names`: every
    channel made, for removal at close.
    """

    incoming: list[list[ChannelName]]
    to: list[dict[int, ChannelName]]
    local: list[bool] = field(default_factory=list)
    names: list[ChannelName] = field(default_factory=list)


def link(
    nodes: Sequence[str],
    edges: Sequence[tuple[int, int]],
    channels: Callable[[int, int, int], list[tuple[int, int, str, int]]],
) -> Links:
    """Links for the actors on `nodes` (a Ray node id each) joined by `edges` (a, b): where a
    and b share a node, `channels(e, a, b)` says which channels edge e gets, as
    (writer, reader, name suffix, bytes)."""
    out = Links([[] for _ in nodes], [{} for _ in nodes])
    for e, (a, b) in enumerate(edges):
        local = nodes[a] == nodes[b]
        out.local.append(local)
        for src, dst, suffix, nbytes in channels(e, a, b) if local else []:
            ch = ChannelName.new(suffix, nbytes)
            out.incoming[dst].append(ch)
            out.to[src][dst] = ch
            out.names.append(ch)
    return out


def chain(k: int) -> list[tuple[int, int]]:
    """Neighbour pairs of a pipeline of k stages: (0, 1), (1, 2), ..."""
    return [(i, i + 1) for i in range(k - 1)]


def ring(k: int) -> list[tuple[int, int]]:
    """Each of k replicas and its right neighbour: (0, 1), ..., (k-1, 0); none when alone."""
    return [(r, (r + 1) % k) for r in range(k)] if k > 1 else []


def close(actors: Sequence[Any], names: Sequence[ChannelName], wait_s: float) -> None:
    """Let each actor unmap and remove its channel files (`close_channels`), then remove here
    whatever is left (an actor already gone)."""
    import ray

    if actors:
        try:
            ray.get([a.close_channels.remote() for a in actors], timeout=wait_s)
        except Exception:  # noqa: BLE001 - an actor already gone: its files are removed below
            pass
    for name in names:
        unlink(name)
