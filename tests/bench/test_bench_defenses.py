"""Per-defense round steps on random updates (protect, aggregate, finalize), defense x op.

The bytes each step puts on the wire go into ``extra_info``, so one saved run holds both sides of the
cost comparison. A defense whose module is missing is skipped. Shapes are small (two 128 x 128 modules,
two clients of ranks 4 and 8) so the default run, once per case, stays within seconds.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from benchmark.asv_bench.common import Steps
from benchmark.contract import ClientInfo, FederationInfo

DEFENSES = {
    "plain_lora": ("plain_lora", {}),
    "she_lora_server_lift": ("she_lora", {"lift": "server_lift"}),
    "she_lora_client_lift": ("she_lora", {"lift": "client_lift"}),
    "full_he_dense": ("full_he", {"packing": "dense"}),
    "maskcrypt": ("maskcrypt", {}),
    "dp": ("dp", {}),
}
SHAPES = {"layers.0.q_proj": (128, 128), "layers.0.v_proj": (128, 128)}


class Round:
    """One defense set up on a two-client federation, with the round's messages precomputed."""

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        from benchmark.contract.stacks import build_defense
        from benchmark.engines.cost import random_update

        self.defense = Steps(build_defense(name, params))  # dp is a wrapper: dp+plain_lora
        clients = (ClientInfo(0, "low", 4, 0.05, 16.0), ClientInfo(1, "high", 8, 0.1, 16.0))
        self.fed = FederationInfo(clients, SHAPES, rounds=1, clients_per_round=2, seed=0)
        self.defense.setup(self.fed)
        gen = torch.Generator().manual_seed(0)
        self.updates = [random_update(c, SHAPES, gen, 1) for c in clients]
        self.defense.negotiate(self.updates)
        self.payloads = [self.defense.protect(u) for u in self.updates]
        self.message = self.defense.aggregate(self.payloads)


@pytest.fixture(scope="module", params=list(DEFENSES))
def round_(request: pytest.FixtureRequest) -> tuple[str, Round]:
    name, params = DEFENSES[request.param]
    return request.param, Round(name, params)


@pytest.mark.parametrize("op", ["protect", "aggregate", "finalize"])
def test_defense_step(benchmark: Any, round_: tuple[str, Round], op: str) -> None:
    label, r = round_
    benchmark.group = f"defense-{op}"
    benchmark.extra_info.update(defense=label, upload_bytes=r.payloads[-1].nbytes(),
                                upload_cipher_bytes=r.payloads[-1].cipher_bytes(), download_bytes=r.message.nbytes())
    if op == "protect":
        out = benchmark(r.defense.protect, r.updates[-1])
        assert out.nbytes() > 0
    elif op == "aggregate":
        out = benchmark.pedantic(r.defense.aggregate, args=(r.payloads,), rounds=3)
        assert out.nbytes() > 0
    else:
        out = benchmark(r.defense.finalize, r.message, r.fed.clients[-1])
        assert set(out) == set(SHAPES)
