"""The ``cost`` engine: shapes-only cost scenarios, no model and no data.

Its clients are ``RandomClients``: each "trains" by drawing random LoRA factors of a paper-scale
model's shapes (one seeded stream for the run), and the defense's client role does the rest; the
round driver runs the same protocol steps as for every engine (negotiate, protect, aggregate,
finalize), so bytes and times are measured without the model. Values are random; only shapes, ranks
and budgets matter. Fixed participants (the first ``clients_per_round``) for ``cost.repeats`` rounds,
no probe, no evaluation. With ``cost.sample_modules`` the run covers a few modules and the per-module
columns are extrapolated linearly, which the row says (``extrapolation``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from benchmark.config import ScenarioConfig
from benchmark.contract import (
    ClientInfo,
    ClientRole,
    ClientUpdate,
    Defense,
    FederationInfo,
    LoRAFactors,
    WirePayload,
)
from benchmark.federation.data import Example
from benchmark.federation.driver import RoundDriver, SimulationResult
from benchmark.federation.endpoint import ClientEndpoint, Factors, OneAtATime
from benchmark.federation.probe import ProbeResult, ProbeRound
from benchmark.federation.sampling import Schedule, make_clients
from benchmark.federation.seeding import torch_generator
from benchmark.federation.train import LocalResult

# Columns that grow linearly with the number of modules (each module is packed, encrypted, aggregated
# and finalized on its own): what ``cost.sample_modules`` extrapolates.
PER_MODULE = ("bytes_up_per_client_round", "bytes_down_per_client_round", "flexlora_broadcast_bytes",
              "cipher_bytes_up", "cipher_bytes_down", "negotiation_bytes", "enc_s", "protect_s", "dec_s", "agg_s")


def module_shapes(scenario: ScenarioConfig) -> dict[str, tuple[int, int]]:
    c = scenario.cost
    return {
        f"model.layers.{i}.self_attn.{m}": (c.out_features, c.in_features) for i in range(c.layers) for m in c.modules
    }


def random_update(client: ClientInfo, shapes: dict[str, tuple[int, int]], gen: torch.Generator, rnd: int) -> ClientUpdate:
    """Random factors (and gradients, input norms) of ``client``'s rank for ``shapes``."""
    factors, grads, norms = {}, {}, {}
    for name, (m, n) in shapes.items():
        A = torch.randn(client.rank, n, generator=gen) / n**0.5
        B = torch.randn(m, client.rank, generator=gen) * 0.01
        factors[name] = LoRAFactors(A, B, client.scale)
        grads[name] = LoRAFactors(torch.randn(client.rank, n, generator=gen) * 1e-3,
                                  torch.randn(m, client.rank, generator=gen) * 1e-3, client.scale)
        norms[name] = torch.rand(n, generator=gen, dtype=torch.float64) * 10
    return ClientUpdate(client, rnd, factors, 100, norms, grads, None, "weights")


class RandomClients(OneAtATime):
    """The ``ClientEndpoint`` of the cost engine: the defense's client role, and random updates in
    place of training (drawn in the order the driver asks, from one stream)."""

    def __init__(self, role: ClientRole, shapes: dict[str, tuple[int, int]], gen: torch.Generator) -> None:
        self.role, self.shapes, self.gen = role, shapes, gen

    def setup(self, fed: FederationInfo) -> WirePayload | None:
        return self.role.setup(fed)

    def setup_costs(self) -> dict[str, float]:
        return self.role.setup_costs()

    def init(self, client: ClientInfo, message: WirePayload | None) -> Factors:
        return {}  # random updates start from nothing

    def train(self, client: ClientInfo, rnd: int, start: Factors, head: dict[str, Tensor]) -> LocalResult:
        return LocalResult(random_update(client, self.shapes, self.gen, rnd), {}, None, None, [], [])

    def propose(self, update: ClientUpdate) -> WirePayload | None:
        return self.role.propose(update)

    def accept(self, reply: WirePayload) -> None:
        self.role.accept(reply)

    def answer(self, message: WirePayload, client: ClientInfo) -> WirePayload | None:
        return self.role.answer(message, client)

    def protect(self, update: ClientUpdate) -> WirePayload:
        t0 = time.perf_counter()
        sent = self.role.protect(update)
        if sent is not None:  # the endpoint times its own protect step, as ``ClientNode`` does
            sent.timings["protect_s"] = time.perf_counter() - t0
        return sent

    def finalize(self, message: WirePayload, client: ClientInfo, *, harness: bool = False) -> tuple[Factors, float]:
        t0 = time.perf_counter()
        factors = self.role.finalize(message, client)
        return factors, time.perf_counter() - t0

    def probe_update(self, client: ClientInfo, rnd: int, start: Factors, batch: list[Example]) -> ClientUpdate:
        raise RuntimeError("the cost engine has no model to probe")

    def privacy_params(self) -> dict[str, Any]:
        return self.role.privacy_params()


class NoModel:
    """The cost engine's referee: no model, so no init message, no probe and no utility."""

    tokenizer = None

    def initial_head(self) -> dict[str, Tensor]:
        return {}

    def init_message(self, client: ClientInfo) -> WirePayload | None:
        return None

    def evaluate(self, latest: WirePayload | None, head: dict[str, Tensor], clients: ClientEndpoint) -> dict[str, Any]:
        return {"utility_metric": None, "utility": None}

    def probe(self, pr: ProbeRound, progress: Callable[[str], None]) -> ProbeResult | None:
        return None

    def metrics(self) -> dict[str, Any]:
        return {}


def simulate(scenario: ScenarioConfig, defense: Defense, seed: int, device: str = "cpu",
             progress: Callable[[str], None] | None = None) -> SimulationResult:
    """``cost.repeats`` rounds of the first ``clients_per_round`` clients on random factors."""
    full = module_shapes(scenario)
    k = scenario.cost.sample_modules
    shapes = dict(sorted(full.items())[:k]) if 0 < k < len(full) else full
    clients = make_clients(scenario, seed)
    fed = FederationInfo(clients, shapes, scenario.rounds, scenario.clients_per_round, seed, device)
    endpoint = RandomClients(defense.client, shapes, torch_generator(seed, "cost"))
    picks = [c.client_id for c in clients[: scenario.clients_per_round]]
    schedule = Schedule(scenario.cost.repeats, lambda rnd: list(picks))
    result = RoundDriver(fed, defense.server, endpoint, NoModel(), schedule, progress).run()
    if len(shapes) < len(full):
        extrapolate(result.metrics, len(shapes), len(full))
    return result


def extrapolate(metrics: dict[str, Any], sampled: int, modules: int) -> None:
    """Scale the per-module columns measured on ``sampled`` modules to all ``modules``, and say so."""
    factor = modules / sampled
    for key in PER_MODULE:
        if metrics.get(key) is not None:
            metrics[key] *= factor
    for tier in metrics["per_tier"].values():
        for key in ("bytes_up", "cipher_bytes_up", "enc_s"):
            if tier.get(key) is not None:
                tier[key] *= factor
    metrics["extrapolation"] = {
        "extrapolated": True, "sample_modules": sampled, "modules": modules,
        "formula": f"bytes and times measured on {sampled} of {modules} modules x {factor:g} "
                   "(each module is packed, encrypted, aggregated and finalized on its own); "
                   "agg_rel_err is the sample's",
    }
