"""Random federations and updates for the SHE-LoRA tests and benchmarks (no model, no data)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from benchmark.contract import ClientInfo, ClientUpdate, FederationInfo, LoRAFactors
from she_lora.lowrank import FactoredDelta, aggregate_lowrank


def federation(
    shapes: dict[str, tuple[int, int]], ranks: Sequence[int], budgets: Sequence[float], alpha: float = 16.0, seed: int = 0
) -> FederationInfo:
    clients = tuple(ClientInfo(i, f"t{i}", r, b, alpha) for i, (r, b) in enumerate(zip(ranks, budgets)))
    return FederationInfo(clients, shapes, rounds=3, clients_per_round=len(clients), seed=seed)


def random_update(client: ClientInfo, shapes: dict[str, tuple[int, int]], rnd: int = 1, seed: int = 0, kind: str = "weights") -> ClientUpdate:
    gen = torch.Generator().manual_seed(seed * 1000 + client.client_id * 10 + rnd)
    factors, norms = {}, {}
    for name, (m, n) in shapes.items():
        A = torch.randn(client.rank, n, generator=gen) / n**0.5
        B = torch.randn(m, client.rank, generator=gen) * 0.01
        factors[name] = LoRAFactors(A, B, client.scale)
        norms[name] = torch.rand(n, generator=gen, dtype=torch.float64) * 10
    n_samples = 20 + 7 * client.client_id
    return ClientUpdate(client, rnd, factors, n_samples, norms, None, None, kind)


def reference(updates: Sequence[ClientUpdate]) -> dict[str, FactoredDelta]:
    """Plaintext FlexLoRA of the raw updates."""
    total = sum(u.n_samples for u in updates)
    return {
        name: aggregate_lowrank([(u.n_samples / total * u.factors[name].scale, u.factors[name].B, u.factors[name].A) for u in updates])
        for name in updates[0].factors
    }
