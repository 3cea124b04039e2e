"""A defense's two roles joined by an in-memory channel, for tests.

The calls are the ones the engines make (``benchmark.federation.protocol``): messages from the client role reach
the server role only as wire copies, and the server's messages reach the client role the same way,
so a test that passes here cannot rely on an object the two roles share.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmark.contract import (
    AttackerView,
    ClientInfo,
    ClientUpdate,
    Defense,
    FederationInfo,
    LoRAFactors,
    WirePayload,
)
from benchmark.federation.protocol import negotiate, setup_roles
from benchmark.federation.transcript import Channel, wire_copy


class Duo:
    """``setup``/``negotiate``/``protect``/``aggregate``/``finalize``/``observe`` over a channel."""

    def __init__(self, defense: Defense, fed: FederationInfo | None = None) -> None:
        self.defense, self.client, self.server = defense, defense.client, defense.server
        self.channel = Channel()
        self.costs: dict[str, float] = {}
        if fed is not None:
            self.setup(fed)

    def setup(self, fed: FederationInfo) -> dict[str, float]:
        self.costs = setup_roles(self.defense, fed, self.channel)
        return self.costs

    def negotiate(self, updates: Sequence[ClientUpdate]) -> list[WirePayload]:
        """Runs the round's negotiation; returns its messages (uploads first, then the reply)."""
        if not updates:
            return []
        rnd = updates[0].round
        before = len(self.channel.transcript.messages)
        negotiate(self.defense, updates, rnd, self.channel)
        return [m.payload for m in self.channel.transcript.messages[before:]]

    def protect(self, update: ClientUpdate) -> WirePayload:
        """The payload as the client sent it (timings included); the server gets copies."""
        return self.client.protect(update)

    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload:
        return self.server.aggregate([wire_copy(p) for p in payloads])

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        return self.client.finalize(wire_copy(message), client)

    def observe(self, payload: WirePayload) -> AttackerView:
        return self.server.observe(wire_copy(payload))

    def privacy_params(self) -> dict:
        return self.defense.privacy_params()
