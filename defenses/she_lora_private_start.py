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

Ranking the vocabulary by distance from the layer-0 span through that estimate still finds part of
the batch at the smallest budgets: DAGER's adaptive mode reads such a view against the vocabulary and
returns the unordered bag (``paper``, a round-1 gradient at batch 1: ROUGE-1 0.14-0.27 at the 0.125%
budget, 0 at 20%; against plain LoRA from a private start, 0.50-0.54). A private rotation of each
upload, (Q A, B Q^T), would not hide it and is not done: within one upload it cancels, since the
server's estimate Q A1 and the upload's B1 Q^T lie in the same basis, so the span test Q A0 x in
rowspace(B1 Q^T) reads as before; it would only defeat a server that combined one upload's estimate
with another message. From round 2 on the start is the broadcast, as in SHE-LoRA.

Registered as ``she_lora_private_start``; its parameters are SHE-LoRA's (``PrivateStartParams``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from benchmark.contract import (
    AttackerView,
    ClientInfo,
    Defense,
    LoRAFactors,
    StartKnowledge,
    WirePayload,
    WrapperClient,
    WrapperServer,
)
from defenses.she_lora import SHELoRAClient, SHELoRAParams, SHELoRAServer


@dataclass(frozen=True)
class PrivateStartParams(SHELoRAParams):
    """SHE-LoRA's knobs, unchanged: the private start needs none of its own."""


class PrivateStartClient(WrapperClient):
    """SHE-LoRA's client role (every hook delegated to it) that trains round 1 from its own draw."""

    def __init__(self, params: PrivateStartParams) -> None:
        super().__init__(params, SHELoRAClient(params))

    def adopt_start(self, sent: Mapping[str, LoRAFactors], own: Callable[[], dict[str, LoRAFactors]],
                    client: ClientInfo) -> dict[str, LoRAFactors]:
        return own()


class PrivateStartServer(WrapperServer):
    """SHE-LoRA's server role (every hook delegated to it) that knows its clients drew their own start."""

    name: ClassVar[str] = "she_lora_private_start"

    def __init__(self, params: PrivateStartParams) -> None:
        super().__init__(params, SHELoRAServer(params))

    def observe(self, payload: WirePayload) -> AttackerView:
        return replace(self.inner.observe(payload), defense=self.name)

    def known_init(self, sent: Mapping[str, LoRAFactors], client: ClientInfo) -> StartKnowledge:
        return StartKnowledge.nothing("the clients drew their round-1 factors privately, not the ones the server sent")

    def privacy_params(self) -> dict[str, Any]:
        return {**self.inner.privacy_params(), "private_start": True}


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
