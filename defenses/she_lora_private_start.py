"""SHE-LoRA with a private start: the paper's method, except that no client trains from factors the
server drew. It closes SHE-LoRA's round-1 hole at no cost in bytes or encryption.

The hole. With ``threat.init = server`` the server draws each rank's round-1 factors (A0 random, B0 = 0,
as peft does) and sends A0. In round 1, B0 = 0 makes dL/dA = s B0^T G^T X vanish, and the whole signal
is dL/dB = s sum_t g_t (A0 x_t)^T: its rows lie in span{A0 x_t}. SHE-LoRA encrypts only selected
columns of A, so B travels in the clear, and a server holding A0 tests every token's A0 x against that
row space (DAGER's B path): SHE-LoRA leaks exactly as plain LoRA does (``attack-strength-r1``: DAGER
0.99 at batch 4 against both).

Two ways to close it. (1) Encrypt what carries the signal: B (m x r per module) in every round-1
upload; at rank 256 on SmolLM2's q_proj that is 147k values of ciphertext per module, more than the
paper's whole selective budget, and every later round would need a rule for when B stops being
dangerous. (2) Take A0 away from the server: the span test needs the A that multiplies x, and a
server that never saw A0 has only what its transcript shows. This module does (2): each client draws
its round-1 factors from its own private stream, exactly as under ``threat.init = client``, whatever
the server sends (``ClientRole.adopt_start``), and the server role says it knows nothing of that
start from its ``init`` message (``ServerRole.known_init``). It costs nothing: no byte, no ciphertext,
no key. FlexLoRA needs no common start, since it aggregates the products s_i B_i A_i, not the factors,
so clients with different A0 (as clients of different ranks already have) aggregate exactly as before;
the start is drawn from peft's own distribution, so local training is unchanged in law. From round 2
on a client starts from the broadcast, as in SHE-LoRA, whose hole this is not.

What the server can still know, given to the adaptive attacker in full: the client's own round-1
upload shows A1 = A0 + dA in its plaintext columns (``SHELoRAServer.start_from_upload``), so the
server's estimate of A0 is A1's plaintext columns, off by the local change (AdamW moves every entry by
about lr per step, densely: a full-rank error) and missing the encrypted columns entirely, which the
negotiation picked for their large input norms, i.e. where A0 x draws much of its energy. Why re-draw
all of A and not only the encrypted columns: the plaintext columns of a server-drawn A0 would stay
known exactly, and at the paper's smallest budget (0.125%, one column of 576) the attacker's error
would be that one column's term alone. B stays at zero: B0 = 0 is what makes the adapted model
start as the base model, and it is public anyway.

That estimate is still too good. DAGER's thresholds reject every token against it, but ranking the
vocabulary by distance from the span puts the batch's tokens first: on ``tiny`` (rank 32, a round-1
gradient, batch 1 and 2) the ``rank`` nearest tokens hold every private token with one encrypted
column of 64 per module (the paper's smallest budget rounds to one) and about two thirds with seven. Hence ``private_basis`` (default on): until a client has received a
broadcast, each upload it sends travels as (Q A, B Q^T) for a fresh Haar-random orthogonal Q that
never leaves the client. The product B A, all FlexLoRA aggregates, is unchanged (so are SHE-LoRA's
encrypted lifts B a_j and its exponent bounds, which use A's column norms and B's row norms), and so
are utility and ``agg_rel_err``. The upload's rows still span A1's row space, but the B path needs the
map x -> A0 x in the basis of the attacked message's dL/dB, and that basis is another unknown
rotation: the same ranking then finds none of the batch. A rotation cannot be read off A0's entries
when they are Gaussian; peft's uniform ones would in principle let independent component analysis
recover Q up to a signed permutation of A's rows, an attack not built here. From round 2 on the start
is the broadcast, as in SHE-LoRA, and nothing is rotated: in ``r256`` the variant is SHE-LoRA.

A gradient message (the probe's ``grad`` observation) is rotated the same way, being the gradient in
the rotated parameters. Registered as ``she_lora_private_start``; its parameters are SHE-LoRA's plus
``private_basis`` (``PrivateStartParams``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from benchmark.contract import (
    AttackerView,
    ClientInfo,
    ClientUpdate,
    Defense,
    FederationInfo,
    LoRAFactors,
    StartKnowledge,
    WirePayload,
    WrapperClient,
    WrapperServer,
)
from defenses.she_lora import SHELoRAClient, SHELoRAParams, SHELoRAServer


@dataclass(frozen=True)
class PrivateStartParams(SHELoRAParams):
    """SHE-LoRA's knobs, and whether uploads from a private start travel in a fresh private basis."""

    private_basis: bool = field(default=True, metadata={"help": (
        "until a client first receives a broadcast, send each of its uploads as (Q A, B Q^T) for a fresh random "
        "orthogonal Q of its own (same product, so FlexLoRA's aggregate is unchanged): the server's estimate of "
        "the start from that upload is then off by an unknown rotation; false: send A as trained")})


def in_fresh_basis(f: LoRAFactors, gen: torch.Generator) -> LoRAFactors:
    """The same adapter product B A in another basis of its rank space: (Q A, B Q^T), Q Haar-random
    orthogonal (QR of a Gaussian matrix, signs fixed by R's diagonal). A gradient's factors (dL/dA,
    dL/dB) transform the same way, being the gradient in the rotated parameters."""
    r = f.A.shape[0]
    q, rr = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(rr)).where(torch.diagonal(rr) != 0, torch.ones(r, dtype=torch.float64))
    A, B = f.A.detach(), f.B.detach()
    return LoRAFactors((q @ A.double()).to(A.dtype), (B.double() @ q.T).to(B.dtype), f.scale)


class PrivateStartClient(WrapperClient):
    """SHE-LoRA's client role (every hook delegated to it) that trains round 1 from its own draw and,
    with ``private_basis``, sends what it trained from that draw in a fresh private basis."""

    def __init__(self, params: PrivateStartParams) -> None:
        super().__init__(params, SHELoRAClient(params))
        self._from_broadcast: set[int] = set()  # clients whose start is a broadcast, hence no longer private
        self._basis: torch.Generator | None = None

    def setup(self, fed: FederationInfo) -> WirePayload | None:
        """The clients' own randomness for the bases, drawn where their keys are (never sent)."""
        self._basis = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
        return super().setup(fed)

    def adopt_start(self, sent: Mapping[str, LoRAFactors], own: Callable[[], dict[str, LoRAFactors]],
                    client: ClientInfo) -> dict[str, LoRAFactors]:
        return own()

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        self._from_broadcast.add(client.client_id)
        return self.inner.finalize(message, client)

    def protect(self, update: ClientUpdate) -> WirePayload | None:
        if self.params.private_basis and update.client.client_id not in self._from_broadcast:
            if self._basis is None:
                raise RuntimeError("she_lora_private_start: call setup(fed) first")
            update = replace(update, factors={n: in_fresh_basis(f, self._basis) for n, f in update.factors.items()})
        return self.inner.protect(update)


class PrivateStartServer(WrapperServer):
    """SHE-LoRA's server role (every hook delegated to it) that knows its clients drew their own start."""

    name: ClassVar[str] = "she_lora_private_start"

    def __init__(self, params: PrivateStartParams) -> None:
        super().__init__(params, SHELoRAServer(params))

    def observe(self, payload: WirePayload) -> AttackerView:
        return replace(self.inner.observe(payload), defense=self.name)

    def known_init(self, sent: Mapping[str, LoRAFactors], client: ClientInfo) -> StartKnowledge:
        return StartKnowledge.nothing("the clients drew their round-1 factors privately, not the ones the server sent")

    def start_from_upload(self, upload: WirePayload, client: ClientInfo) -> StartKnowledge:
        """SHE-LoRA's estimate (plaintext columns of the upload's A); with ``private_basis`` that A is
        the client's in a rotation the server lacks: its row space is right, the map A x is not."""
        known = self.inner.start_from_upload(upload, client)
        if self.params.private_basis and known.factors is not None:
            known = replace(known, note=known.note + "; in the client's private basis (an unknown rotation of A's rows)")
        return known

    def privacy_params(self) -> dict[str, Any]:
        return {**self.inner.privacy_params(), "private_start": True, "private_basis": self.params.private_basis}


class SHELoRAPrivateStart(Defense):
    """SHE-LoRA whose clients never train from a start the server drew (see the module docstring)."""

    name: ClassVar[str] = "she_lora_private_start"
    version: ClassVar[str] = "1"
    Params = PrivateStartParams
    Client = PrivateStartClient
    Server = PrivateStartServer
    encrypts: ClassVar[str] = "selective"

    def applied_budget(self, tier: ClientInfo) -> float | None:
        return tier.budget * self.params.budget_scale
