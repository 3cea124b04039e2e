"""The one interface between the round driver and the clients, whatever carries the calls.

The driver reaches every client through a ``ClientEndpoint``; an engine decides what stands behind
it: a ``ClientNode`` in this process (``inproc``), a proxy that sends Flower messages to the node
hosting the client (``flower``), or random updates of the right shapes (``cost``).

Two kinds of data cross it, and they are kept apart. Protocol messages are ``WirePayload``s (the
setup hello, the init message, proposals and the negotiation reply, uploads, broadcasts): the driver
puts each through the ``Channel``, which meters it and records it in the server's transcript. Harness
data (a client's private update, its start, the texts it trained on, finalized factors, timings)
comes back as plain Python values for the referee only: it never enters the transcript or a byte
count, and no attack ever sees it. A node keeps no state between calls but the defense's client role,
so each call carries the private inputs it needs (start, head, update) from the referee.

Where the protocol lets several clients act at once (each sampled client trains, proposes, protects,
finalizes its copy of the broadcast), the driver asks for the whole phase in one ``*_many`` call, in
pick order. An endpoint whose calls wait on a transport (Flower) sends the phase's messages together,
so the nodes' waits and work overlap; one whose calls wait on nothing (in process, the cost engine)
answers them one at a time (``OneAtATime``). The driver meters and records every message before or
after such a call, in pick order, so the transcript and byte counts never depend on which client
answered first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from torch import Tensor

from benchmark.contract import ClientInfo, ClientUpdate, FederationInfo, LoRAFactors, WirePayload
from benchmark.federation.data import Example
from benchmark.federation.train import LocalResult
from benchmark.federation.transcript import wire_copy

Factors = dict[str, LoRAFactors]


class ClientEndpoint(Protocol):
    """What the driver asks of the clients. Role calls (setup .. finalize) take the same arguments
    as the defense's ``ClientRole``, so ``benchmark.federation.protocol`` runs its steps through an endpoint."""

    def setup(self, fed: FederationInfo) -> WirePayload | None:
        """The client role's key setup; its message for the server, if any."""

    def setup_costs(self) -> dict[str, float]:
        """The client role's setup measurements."""

    def init(self, client: ClientInfo, message: WirePayload | None) -> Factors:
        """Round-1 factors: read from the server's delivered ``init`` message, or (None) drawn privately."""

    def train(self, client: ClientInfo, rnd: int, start: Factors, head: dict[str, Tensor]) -> LocalResult:
        """Local training from ``start`` (and the global head); the result is harness data."""

    def propose(self, update: ClientUpdate) -> WirePayload | None:
        """The negotiation proposal of ``update``'s client."""

    def accept(self, reply: WirePayload) -> None:
        """The server's negotiation reply, for every client that proposed this round."""

    def answer(self, message: WirePayload, client: ClientInfo) -> WirePayload | None:
        """``client``'s reply to a message the server sent it alone (``ServerRole.exchange``)."""

    def protect(self, update: ClientUpdate) -> WirePayload:
        """The upload; its ``timings`` carry the client's own protect and encryption times."""

    def finalize(self, message: WirePayload, client: ClientInfo, *, harness: bool = False) -> tuple[Factors, float]:
        """The client's own-rank factors from a broadcast, and its decryption time. ``harness``: the
        referee's own finalize (the global model it evaluates), not a protocol message."""

    def probe_update(self, client: ClientInfo, rnd: int, start: Factors, batch: list[Example]) -> ClientUpdate:
        """The threat's attacked update on a private batch from ``start`` (harness data)."""

    def privacy_params(self) -> dict[str, Any]:
        """Privacy facts only the clients can tell (e.g. a per-client DP accountant)."""

    # ---- one phase for several clients (``OneAtATime`` answers them in turn) ----------------------

    def init_many(self, items: Sequence[tuple[ClientInfo, WirePayload | None]]) -> list[Factors]:
        """``init`` for each (client, delivered message), in that order."""

    def train_many(self, jobs: Sequence[tuple[ClientInfo, Factors]], rnd: int, head: dict[str, Tensor]) -> list[LocalResult]:
        """``train`` for each (client, start), in that order."""

    def propose_many(self, updates: Sequence[ClientUpdate]) -> list[WirePayload | None]:
        """``propose`` for each update, in that order."""

    def protect_many(self, updates: Sequence[ClientUpdate]) -> list[WirePayload | None]:
        """``protect`` for each update, in that order."""

    def finalize_many(self, message: WirePayload, clients: Sequence[ClientInfo]) -> list[tuple[Factors, float]]:
        """``finalize`` of ``message`` by each client, each on its own copy (its decryption time is its
        own, never a cache hit), in that order."""


class OneAtATime:
    """The phase calls of an endpoint whose calls wait on nothing: one call per client, in order (a
    mixin for endpoints that define the single calls)."""

    def init_many(self: ClientEndpoint, items: Sequence[tuple[ClientInfo, WirePayload | None]]) -> list[Factors]:
        return [self.init(client, message) for client, message in items]

    def train_many(self: ClientEndpoint, jobs: Sequence[tuple[ClientInfo, Factors]], rnd: int, head: dict[str, Tensor]) -> list[LocalResult]:
        return [self.train(client, rnd, start, head) for client, start in jobs]

    def propose_many(self: ClientEndpoint, updates: Sequence[ClientUpdate]) -> list[WirePayload | None]:
        return [self.propose(u) for u in updates]

    def protect_many(self: ClientEndpoint, updates: Sequence[ClientUpdate]) -> list[WirePayload | None]:
        return [self.protect(u) for u in updates]

    def finalize_many(self: ClientEndpoint, message: WirePayload, clients: Sequence[ClientInfo]) -> list[tuple[Factors, float]]:
        return [self.finalize(wire_copy(message), client) for client in clients]
