"""One federated round as messages between a defense's two roles, shared by every engine.

Each step hands the client side's message to the ``Channel`` (metered, recorded in the server's
transcript, copied) and the server role only ever receives the copies. The round driver
(``benchmark.federation.driver``, for every engine) and the tests call these functions, so the order
of the protocol lives in one place: setup, negotiation, exchanges, upload, exchanges, aggregation,
broadcast.

``parties`` is anything with a ``client`` and a ``server``: a ``Defense`` (its two roles side by side,
as the tests use them) or ``Parties`` (the driver's: the clients' endpoint and the server role).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmark.contract import ClientInfo, ClientUpdate, Defense, FederationInfo, ServerRole, WirePayload
from benchmark.federation.transcript import Channel


@dataclass(frozen=True)
class Parties:
    """The two sides of one run: the clients (a ``ClientRole`` or a ``ClientEndpoint``: the calls
    used here are the same) and the defense's server role."""

    client: Any
    server: ServerRole


def setup_roles(parties: Parties | Defense, fed: FederationInfo, channel: Channel) -> dict[str, float]:
    """Client keys first; their public part (if any) travels to the server, which sets up from it."""
    t0 = time.perf_counter()
    hello = parties.client.setup(fed)
    received = [channel.up(hello, 0, -1, "setup")] if hello is not None else []
    parties.server.setup(fed, received)
    return {**parties.client.setup_costs(), "setup_s": time.perf_counter() - t0}


def negotiate(parties: Parties | Defense, updates: Sequence[ClientUpdate], rnd: int, channel: Channel) -> None:
    """Each participant's proposal up, the server's one reply down to all of them."""
    settle(parties, updates, [parties.client.propose(u) for u in updates], rnd, channel)


def settle(parties: Parties | Defense, updates: Sequence[ClientUpdate], proposals: Sequence[WirePayload | None],
           rnd: int, channel: Channel) -> None:
    """The negotiation once the participants proposed (``proposals[i]`` from ``updates[i]``'s client,
    None: it had nothing to say): each proposal up in that order, the server's one reply down to all."""
    received = [channel.up(message, rnd, u.client.client_id, "negotiation")
                for u, message in zip(updates, proposals, strict=True) if message is not None]
    reply = parties.server.negotiate(received)
    if reply is not None:
        parties.client.accept(channel.down(reply, rnd, [u.client.client_id for u in updates], "negotiation"))


MAX_EXCHANGES = 16  # a server role that keeps asking past this is a bug, not a protocol


def exchange(parties: Parties | Defense, clients: Sequence[ClientInfo], received: Sequence[WirePayload], rnd: int,
             channel: Channel) -> None:
    """The server's messages to single participants and their answers (``ServerRole.exchange``), one
    message each way per client and step, until the server asks nothing; metered as negotiation."""
    by_id = {c.client_id: c for c in clients}
    for _ in range(MAX_EXCHANGES):
        asks = parties.server.exchange(received)
        if not asks:
            return
        received = []
        for cid, ask in asks.items():
            reply = parties.client.answer(channel.down(ask, rnd, [cid], "negotiation"), by_id[cid])
            if reply is not None:
                received.append(channel.up(reply, rnd, cid, "negotiation"))
    raise RuntimeError(f"round {rnd}: the server role asked for more than {MAX_EXCHANGES} exchanges")


@dataclass
class Upload:
    """A protected update as the server received it, and the client's own encryption time."""

    payload: WirePayload
    enc_s: float | None  # the defense's own encryption time (None: nothing was encrypted)
    nbytes: int
    cipher_bytes: int
    protect_s: float = 0.0  # wall time of the whole protect step (packing, encryption, serialization)


def upload(parties: Parties | Defense, update: ClientUpdate, rnd: int, channel: Channel,
           kind: str = "upload") -> Upload | None:
    """``protect`` on the client, then the wire; ``probe`` uploads are recorded but not metered.
    None: the client dropped out of the round (its ``protect`` sent nothing)."""
    t0 = time.perf_counter()
    sent = parties.client.protect(update)
    return receive(sent, update, rnd, channel, kind, time.perf_counter() - t0)


def receive(sent: WirePayload | None, update: ClientUpdate, rnd: int, channel: Channel, kind: str = "upload",
            wall_s: float = 0.0) -> Upload | None:
    """``update``'s protected upload ``sent`` on the wire (None: the client dropped out). Its protect
    time is the one the client role reports: a client role in another process measures its own
    (``wall_s``, the caller's wall time of the call, adds transport and is used only when it does not)."""
    if sent is None:
        return None
    protect_s = sent.timings.get("protect_s", wall_s)
    received = channel.up(sent, rnd, update.client.client_id, kind, metered=kind == "upload")
    return Upload(received, sent.timings.get("enc_s"), received.nbytes(), received.cipher_bytes(), protect_s)


def aggregate(parties: Parties | Defense, uploads: Sequence[Upload]) -> tuple[WirePayload, float]:
    """The server's aggregate of the round's uploads and its own aggregation time."""
    t0 = time.perf_counter()
    message = parties.server.aggregate([u.payload for u in uploads])
    return message, message.timings.get("agg_s", time.perf_counter() - t0)


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of a per-client-round timing, a None (e.g. no encryption in that upload) counting 0; None
    when every value is None (a plaintext defense reports no encryption time, not a zero one)."""
    if not values or all(v is None for v in values):
        return None
    return sum(v or 0.0 for v in values) / len(values)
