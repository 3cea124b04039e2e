"""No protection: clients upload their LoRA factors in the clear; the server aggregates FlexLoRA-style."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from benchmark.api import (
    AttackerView,
    ClientInfo,
    ClientUpdate,
    FederationInfo,
    LoRAFactors,
    ObservedModule,
    WirePayload,
)
from defenses.common import (
    broadcast,
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


class PlainLoRA:
    """FlexLoRA without protection: the weighted sum of s_i B_i A_i, truncated per client by SVD."""

    name: ClassVar[str] = "plain_lora"
    version: ClassVar[str] = "1"
    Params = PlainLoRAParams

    def __init__(self, params: PlainLoRAParams | None = None) -> None:
        self.params = params or PlainLoRAParams()
        self.fed: FederationInfo | None = None

    def setup(self, fed: FederationInfo) -> dict[str, float]:
        self.fed = fed
        return {}

    def protect(self, update: ClientUpdate) -> WirePayload:
        return WirePayload(
            sender=f"client:{update.client.client_id}",
            plain=encode_factors(update.factors),
            meta=update_meta(update),
        )

    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload:
        weights = fedavg_weights(payloads)
        per_client = [decode_factors(p.plain, p.meta["scale"]) for p in payloads]
        deltas: dict[str, FactoredDelta] = {}
        for name in per_client[0]:
            terms = [(w * f[name].scale, f[name].B, f[name].A) for w, f in zip(weights, per_client)]
            deltas[name] = aggregate_lowrank(terms)
        return broadcast(deltas, self._broadcast_rank())

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        seed = self.fed.seed if self.fed else 0
        return finalize_to_rank(read_broadcast(message), client, seed)

    def observe(self, payload: WirePayload) -> AttackerView:
        factors = decode_factors(payload.plain, payload.meta["scale"])
        modules = {n: ObservedModule(A=f.A.clone(), B=f.B.clone(), scale=f.scale) for n, f in factors.items()}
        return AttackerView(defense=self.name, kind=payload.meta.get("kind", "weights"), modules=modules)

    def privacy_params(self) -> dict[str, Any]:
        return {"encrypted_fraction": 0.0}

    def _broadcast_rank(self) -> int:
        return max(c.rank for c in self.fed.clients) if self.fed else 64
