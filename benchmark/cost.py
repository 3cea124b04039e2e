"""Shapes-only cost scenarios: random LoRA factors of a paper-scale model's shapes go through one
defense's full round (the same ``benchmark.protocol`` steps as the federated engine: negotiate,
protect, aggregate, finalize) so bytes and times can be measured without the model. Values are
random; only shapes, ranks and budgets matter here."""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmark.api import ClientUpdate, Defense, FederationInfo, LoRAFactors
from benchmark.config import ScenarioConfig
from benchmark.federated import (
    SimulationResult,
    aggregation_error,
    flexlora_broadcast_bytes,
    make_clients,
    reference_aggregate,
    summarize_tiers,
)
from benchmark.protocol import aggregate, mean_or_none, negotiate, setup_roles, upload
from benchmark.seeding import torch_generator
from benchmark.transcript import Channel, wire_copy


def module_shapes(scenario: ScenarioConfig) -> dict[str, tuple[int, int]]:
    c = scenario.cost
    return {
        f"model.layers.{i}.self_attn.{m}": (c.out_features, c.in_features) for i in range(c.layers) for m in c.modules
    }


def random_update(client, shapes: dict[str, tuple[int, int]], gen: torch.Generator, rnd: int) -> ClientUpdate:
    factors, grads, norms = {}, {}, {}
    for name, (m, n) in shapes.items():
        A = torch.randn(client.rank, n, generator=gen) / n**0.5
        B = torch.randn(m, client.rank, generator=gen) * 0.01
        factors[name] = LoRAFactors(A, B, client.scale)
        grads[name] = LoRAFactors(torch.randn(client.rank, n, generator=gen) * 1e-3,
                                  torch.randn(m, client.rank, generator=gen) * 1e-3, client.scale)
        norms[name] = torch.rand(n, generator=gen, dtype=torch.float64) * 10
    return ClientUpdate(client, rnd, factors, 100, norms, grads, None, "weights")


# Columns that grow linearly with the number of modules (each module is packed, encrypted, aggregated
# and finalized on its own): what ``cost.sample_modules`` extrapolates.
PER_MODULE = ("bytes_up_per_client_round", "bytes_down_per_client_round", "flexlora_broadcast_bytes",
              "cipher_bytes_up", "cipher_bytes_down", "negotiation_bytes", "enc_s", "protect_s", "dec_s", "agg_s")


def simulate_cost(scenario: ScenarioConfig, defense: Defense, seed: int, device: str = "cpu",
                  progress=None) -> SimulationResult:
    full = module_shapes(scenario)
    k = scenario.cost.sample_modules
    shapes = dict(sorted(full.items())[:k]) if 0 < k < len(full) else full
    clients = make_clients(scenario, seed)
    fed = FederationInfo(clients, shapes, scenario.rounds, scenario.clients_per_round, seed, device)
    channel = Channel()
    setup_costs = setup_roles(defense, fed, channel)
    setup_s = setup_costs.pop("setup_s")
    t0 = time.perf_counter()
    timings: dict[str, list[float]] = {"enc_s": [], "dec_s": [], "agg_s": []}
    errors, rounds = [], []
    per_tier: dict[str, dict[str, list[float]]] = {}
    gen = torch_generator(seed, "cost")
    for rnd in range(1, scenario.cost.repeats + 1):
        if progress:
            progress(f"cost round {rnd}/{scenario.cost.repeats}")
        picks = clients[: scenario.clients_per_round]
        updates = [random_update(c, shapes, gen, rnd) for c in picks]
        negotiate(defense, updates, rnd, channel)
        uploads = []
        for u in updates:
            sent = upload(defense, u, rnd, channel)
            timings["enc_s"].append(sent.enc_s)
            tier = per_tier.setdefault(u.client.tier, {"bytes_up": [], "cipher_bytes_up": [], "enc_s": []})
            tier["bytes_up"].append(sent.nbytes)
            tier["cipher_bytes_up"].append(sent.cipher_bytes)
            tier["enc_s"].append(sent.enc_s)
            uploads.append(sent)
        message, agg_s = aggregate(defense, uploads)
        timings["agg_s"].append(agg_s)
        delivered = channel.down(message, rnd, [c.client_id for c in picks], "broadcast")
        reference = reference_aggregate(updates)
        for c in picks:  # each receiver decrypts its own copy, as in the federated engine
            copy = wire_copy(delivered)
            t = time.perf_counter()
            finalized = defense.client.finalize(copy, c)
            timings["dec_s"].append(time.perf_counter() - t)
            errors.append(aggregation_error(finalized, reference, c))
        rounds.append({"round": rnd, "clients": [c.client_id for c in picks], "agg_rel_err": max(errors)})
    metrics: dict[str, Any] = {
        **channel.meter.summary(), **{k: mean_or_none(v) for k, v in timings.items()},
        "agg_rel_err": max(errors), "setup_s": setup_s, "setup_costs": setup_costs,
        "sim_s": time.perf_counter() - t0, "utility_metric": None, "utility": None,
        "per_tier": summarize_tiers(per_tier, clients),
        "flexlora_broadcast_bytes": flexlora_broadcast_bytes(fed),
    }
    if len(shapes) < len(full):
        factor = len(full) / len(shapes)
        for key in PER_MODULE:
            if metrics.get(key) is not None:
                metrics[key] *= factor
        for tier in metrics["per_tier"].values():
            for key in ("bytes_up", "cipher_bytes_up", "enc_s"):
                if tier.get(key) is not None:
                    tier[key] *= factor
        metrics["extrapolation"] = {
            "extrapolated": True, "sample_modules": len(shapes), "modules": len(full),
            "formula": f"bytes and times measured on {len(shapes)} of {len(full)} modules x {factor:g} "
                       "(each module is packed, encrypted, aggregated and finalized on its own); "
                       "agg_rel_err is the sample's",
        }
    return SimulationResult(metrics, rounds, None)
