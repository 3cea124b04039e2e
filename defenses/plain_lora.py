"""No protection: clients upload their LoRA factors in the clear; the server aggregates FlexLoRA-style."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from benchmark.contract import (
    AttackerView,
    ClientInfo,
    ClientRole,
    ClientUpdate,
    Defense,
    FederationInfo,
    LoRAFactors,
    ObservedModule,
    ServerRole,
    StartKnowledge,
    WirePayload,
)
from defenses.common import (
    broadcast,
    broadcast_rank,
    decode_factors,
    encode_factors,
    fedavg_weights,
    finalize_to_rank,
    read_broadcast,
    update_meta,
)
from she_lora.lowrank import FactoredDelta, aggregate_lowrank


@dataclass(frozen=True)
class PlainLoRAParams:
    """plain_lora has no parameters."""


class PlainClient(ClientRole):
    """Uploads its own-rank factors as they are; finalizes by truncating the broadcast to its rank."""

    def __init__(self, params: Any) -> None:
        self.params = params
        self.fed: FederationInfo | None = None

    def setup(self, fed: FederationInfo) -> WirePayload | None:
        self.fed = fed
        return None

    def protect(self, update: ClientUpdate) -> WirePayload:
        return WirePayload(sender=f"client:{update.client.client_id}", plain=encode_factors(update.factors),
                           meta=update_meta(update))

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        return finalize_to_rank(read_broadcast(message), client, self.fed.seed if self.fed else 0)


class PlainServer(ServerRole):
    """FlexLoRA: the weighted sum of s_i B_i A_i through stacked factors, broadcast at the top rank.

    It can replay every client's finalize from its own broadcast (truncation is deterministic and
    its padding rows come from the public federation seed), so it knows each client's start exactly.
    That stays honest under the padding rule of ``defenses.common.finalize_to_rank`` (replayable
    padding must reveal nothing secret): plain LoRA permutes nothing, so there is nothing to reveal.
    """

    name: ClassVar[str] = "plain_lora"

    def __init__(self, params: Any) -> None:
        self.params = params
        self.fed: FederationInfo | None = None

    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload:
        weights = fedavg_weights(payloads)
        per_client = [decode_factors(p.plain, p.meta["scale"]) for p in payloads]
        rank = broadcast_rank(self.fed)  # the broadcast keeps this many components: compute no more
        deltas: dict[str, FactoredDelta] = {}
        for name in per_client[0]:
            terms = [(w * f[name].scale, f[name].B, f[name].A) for w, f in zip(weights, per_client)]
            deltas[name] = aggregate_lowrank(terms, rank=rank)
        return broadcast(deltas, rank)

    def observe(self, payload: WirePayload) -> AttackerView:
        factors = decode_factors(payload.plain, payload.meta["scale"])
        modules = {n: ObservedModule(A=f.A.clone(), B=f.B.clone(), scale=f.scale) for n, f in factors.items()}
        return AttackerView(defense=self.name, kind=payload.meta.get("kind", "weights"), modules=modules)

    def known_start(self, broadcast: WirePayload, client: ClientInfo) -> StartKnowledge:
        factors = finalize_to_rank(read_broadcast(broadcast), client, self.fed.seed if self.fed else 0)
        return StartKnowledge(factors, "exact", "replayed the client's finalize from the broadcast")

    def start_from_upload(self, upload: WirePayload, client: ClientInfo) -> StartKnowledge:
        """A private round-1 start estimated from the client's own upload of that round: its A is the
        start's A plus the local change (every entry off by about lr x local steps under AdamW), and
        B = 0 is LoRA's public initialisation, hence exact."""
        factors = {n: LoRAFactors(f.A.clone(), torch.zeros_like(f.B), f.scale)
                   for n, f in decode_factors(upload.plain, upload.meta["scale"]).items()}
        return StartKnowledge(factors, "estimate", "A from the client's own round-1 upload (start plus its local "
                              "change), B = 0 as LoRA starts")

    def privacy_params(self) -> dict[str, Any]:
        return {"encrypted_fraction": 0.0}


class PlainLoRA(Defense):
    """FlexLoRA without protection: the weighted sum of s_i B_i A_i, truncated per client by SVD."""

    name: ClassVar[str] = "plain_lora"
    version: ClassVar[str] = "2"
    Params = PlainLoRAParams
    Client = PlainClient
    Server = PlainServer

    def paper_method(self) -> str | None:
        return "FlexLoRA"

    def cost_role(self) -> str | None:
        return "plain_lora"
