"""``agg_rel_err``'s truth comes from the harness (float64, no she_lora): it agrees with a dense SVD,
reads float32 rounding for exact defenses and CKKS noise for she_lora, and catches a wrong aggregate."""

from __future__ import annotations

import pytest
import torch

from benchmark.contract import ServerRole, WirePayload
from benchmark.engines import cost, inproc
from benchmark.federation.reference import factor_sum
from benchmark.running import resolve_scenario
from defenses import DEFENSES


@pytest.mark.parametrize("m, n, ranks", [(12, 9, (2, 3)), (5, 40, (4, 4)), (30, 30, (8, 16))])
def test_truncation_through_the_factors_is_the_dense_svd_truncation(m, n, ranks):
    """Stacked ranks may exceed a side (5 x 40 with 8 columns): the QR route still gives Eckart-Young."""
    gen = torch.Generator().manual_seed(0)
    terms = [(0.3 + i, torch.randn(m, r, generator=gen), torch.randn(r, n, generator=gen)) for i, r in enumerate(ranks)]
    dense = sum(c * B.double() @ A.double() for c, B, A in terms)
    U, S, Vh = torch.linalg.svd(dense)
    got = factor_sum(terms)
    for r in (1, min(ranks), min(m, n, sum(ranks)), sum(ranks)):  # a client rank may exceed a side (v_proj: 192 < 256)
        k = min(r, m, n)
        want = (U[:, :k] * S[:k]) @ Vh[:k]
        assert torch.allclose(got.truncated(r), want, atol=1e-10 * float(S[0]))


@pytest.fixture(scope="module")
def tiny_errors() -> dict[str, float]:
    torch.set_num_threads(1)
    scenario = resolve_scenario("tiny", {"rounds": 2})
    return {name: inproc.simulate(scenario, DEFENSES.get(name)(), 0).metrics["agg_rel_err"]
            for name in ("plain_lora", "she_lora")}


def test_exact_defenses_read_float32_rounding_on_tiny(tiny_errors):
    assert 0 < tiny_errors["plain_lora"] < 1e-6


def test_she_lora_reads_ckks_noise_on_tiny(tiny_errors):
    assert 0 < tiny_errors["she_lora"] < 1e-5


class OffByOnePercent(ServerRole):
    """A broken server role: the inner defense's aggregate with every plaintext tensor scaled by 1.01."""

    def __init__(self, inner: ServerRole) -> None:
        self.inner = inner

    def setup(self, fed, hello) -> None:
        self.inner.setup(fed, hello)

    def negotiate(self, proposals):
        return self.inner.negotiate(proposals)

    def aggregate(self, payloads) -> WirePayload:
        msg = self.inner.aggregate(payloads)
        msg.plain = {k: v * 1.01 if v.is_floating_point() else v for k, v in msg.plain.items()}
        return msg


def test_a_wrong_aggregate_reads_a_large_error():
    torch.set_num_threads(1)
    scenario = resolve_scenario("tiny", {"kind": "cost", "rounds": 1, "cost": {"layers": 1, "out_features": 32,
                                                                                 "in_features": 24}})
    right = DEFENSES.get("plain_lora")()
    wrong = DEFENSES.get("plain_lora")()
    wrong.server = OffByOnePercent(wrong.server)
    assert cost.simulate(scenario, right, 0).metrics["agg_rel_err"] < 1e-6
    assert cost.simulate(scenario, wrong, 0).metrics["agg_rel_err"] > 5e-3
