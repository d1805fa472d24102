"""Contract of graphpart.engines.transports.topology: channels only between actors on one node.

`chain(k)` pairs each stage with the next, `ring(k)` each replica with its right neighbour
(none when alone). `link` records for every edge whether its ends share a node and, where they
do, makes the channels the caller asks for: the reader reads it (`incoming`), the writer reaches
the reader through it (`to`), and every one is listed for removal (`names`); `close` removes
the listed files (those the actors left, or all of them when there are no actors to ask).
"""

from __future__ import annotations

import os

from graphpart.engines.transports.topology import chain, close, link, ring


def _both_ways(e, a, b):
    return [(a, b, f"t-{e}f", 100), (b, a, f"t-{e}b", 100)]


def test_chain_and_ring_edges():
    assert chain(1) == [] and chain(3) == [(0, 1), (1, 2)]
    assert ring(1) == [] and ring(3) == [(0, 1), (1, 2), (2, 0)]


def test_a_chain_gets_channels_only_between_co_located_neighbours():
    links = link(["n1", "n1", "n2"], chain(3), _both_ways)
    assert links.local == [True, False]
    assert [c.capacity for c in links.names] == [100, 100]
    fwd, bwd = links.names
    assert links.to[0] == {1: fwd} and links.to[1] == {0: bwd} and links.to[2] == {}
    assert links.incoming == [[bwd], [fwd], []]
    assert fwd.data.endswith("graphpart-t-0f.buf")


def test_a_ring_of_two_links_both_ways_and_none_when_asked_for_none():
    links = link(["n", "n"], ring(2), lambda e, a, b: [(a, b, f"r{e}", 8)])
    assert links.local == [True, True]
    assert links.to == [{1: links.names[0]}, {0: links.names[1]}]
    assert links.incoming == [[links.names[1]], [links.names[0]]]
    none = link(["n", "n"], ring(2), lambda e, a, b: [])
    assert none.local == [True, True] and none.names == [] and none.to == [{}, {}]


def test_close_removes_the_channel_files_left():
    links = link(["n", "n"], chain(2), _both_ways)
    made = [p for c in links.names[:1] for p in (c.data, c.fifo)]
    for p in made:
        open(p, "wb").close()
    close([], links.names, 1.0)  # the second channel's files were never made: no error
    assert not any(os.path.exists(p) for p in made)
