"""The Ray actor bodies of a device of virtual stages: its chunks' workers (StageActor's
`workers`), its sends routed by the sending virtual stage, its channels counted by the chunk
that maps them (workers/actor.py holds the one-stage bodies)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workers.actor import ChannelStageActor, PushStageActor, _sender
from workers.channels import Channel, ChannelInbox, ChannelName


class PushDeviceActor(PushStageActor):
    """A device whose chunks send through Ray: `routes[tag]` (workers/push.run_step)."""

    def connect_routes(self, peers: Sequence[Any], routes: dict[str, Any]) -> None:
        """`routes[tag]` is the actor that takes the tensors sent under `tag` ("F3": virtual
        stage 3's activations, "B4": stage 4's cotangents); `peers` every worker it sends to
        (woken when this one fails)."""
        self.peers = list(peers)
        self.routes = {tag: _sender(peer) for tag, peer in routes.items()}


class ChannelDeviceActor(ChannelStageActor, PushDeviceActor):
    """A device whose chunks reach devices on the same node through shared-memory channels
    (one a direction for each boundary between two devices), and the others through Ray."""

    def open_device_inbox(
        self,
        incoming: Sequence[tuple[int, ChannelName]],
        own_core: bool = False,
        feed: ChannelName | None = None,
    ) -> None:
        """Create the channels the chunks read, each (chunk, name), and `feed` (the driver's
        inputs, read by chunk 0); each counted in its chunk's ledger as a stage's are
        ("channel:in0", "channel:in1" a chunk, "channel:feed")."""
        spin = ChannelInbox.SPIN_OWN_CORE if own_core else ChannelInbox.SPIN_SHARED_CORE
        chans = [*(n for _, n in incoming), *([feed] if feed is not None else [])]
        self.inbox = ChannelInbox([Channel.create(n) for n in chans], spin)
        for c, w in enumerate(self.workers):  # mapped here, so counted here (and by the sender)
            for i, n in enumerate(n for chunk, n in incoming if chunk == c):
                w.ledger.add(f"channel:in{i}", "boundary", n.capacity)
        if feed is not None:
            self.worker.ledger.add("channel:feed", "boundary", feed.capacity)
        self.outgoing: list[Channel] = []

    def connect_device_channels(
        self,
        peers: Sequence[Any],
        routes: dict[str, Any],
        channels: dict[str, tuple[int, str, ChannelName]],
    ) -> None:
        """`connect_routes` (to devices on other nodes), and `channels[tag] = (chunk, side,
        name)`: the tensors sent under `tag` go through that channel, counted in the chunk's
        ledger ("channel:to_prev", "channel:to_next")."""
        self.connect_routes(peers, routes)
        assert self.routes is not None
        for tag, (c, side, name) in channels.items():
            ch = Channel.attach(name)
            self.outgoing.append(ch)
            self.workers[c].ledger.add(f"channel:to_{side}", "boundary", name.capacity)
            self.routes[tag] = ch.send
