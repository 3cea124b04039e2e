"""Client-level DP (FlexLoRA-DP): clipping, noise statistics, accounting, parameter errors."""

from __future__ import annotations

import math

import pytest
import torch
from duo import Duo

from benchmark.config import ConfigError, params_from_dict
from benchmark.contract import ClientInfo, ClientUpdate, FederationInfo, LoRAFactors
from defenses.dp import ClientLevelDP, ClientLevelDPParams, epsilon_for, solve_sigma
from defenses.plain_lora import PlainLoRA

SHAPES = {"l0.q_proj": (96, 64), "l0.v_proj": (64, 64)}


def _fed(ranks=(2, 4), rounds=10, per_round=2, n_clients=None, seed=0) -> FederationInfo:
    clients = tuple(ClientInfo(i, "t", r, 0.0, 8.0) for i, r in enumerate(ranks))
    if n_clients:
        clients = tuple(ClientInfo(i, "t", ranks[i % len(ranks)], 0.0, 8.0) for i in range(n_clients))
    return FederationInfo(clients, SHAPES, rounds, per_round, seed)


def _factors(client: ClientInfo, gen: torch.Generator, std: float = 0.1) -> dict[str, LoRAFactors]:
    return {
        name: LoRAFactors(torch.randn(client.rank, n, generator=gen) * std, torch.randn(m, client.rank, generator=gen) * std, client.scale)
        for name, (m, n) in SHAPES.items()
    }


def _update(client: ClientInfo, factors, prev, kind: str = "weights", n: int = 10) -> ClientUpdate:
    return ClientUpdate(client, 1, factors, n, {}, prev=prev, kind=kind)


def _flat(factors) -> torch.Tensor:
    return torch.cat([torch.cat([f.A.flatten(), f.B.flatten()]) for _, f in sorted(factors.items())])


def test_noise_matches_sigma_times_clip():
    fed = _fed()
    d = Duo(ClientLevelDP.over(PlainLoRA(), ClientLevelDPParams(clip=0.5, sigma=2.0)))
    d.setup(fed)
    gen = torch.Generator().manual_seed(1)
    prev = _factors(fed.clients[1], gen)
    payload = d.protect(_update(fed.clients[1], prev, prev))  # zero delta: upload - prev is pure noise
    view = d.observe(payload)
    noise = _flat({n: LoRAFactors(m.A - prev[n].A, m.B - prev[n].B) for n, m in view.modules.items()})
    assert noise.numel() > 1000
    assert abs(float(noise.std()) - 1.0) < 0.05  # sigma * C = 1.0
    assert abs(float(noise.mean())) < 0.06


def test_clipping_bounds_the_joint_norm_and_keeps_small_updates():
    fed = _fed()
    gen = torch.Generator().manual_seed(2)
    client = fed.clients[0]
    prev, trained = _factors(client, gen), _factors(client, gen, std=1.0)
    d = Duo(ClientLevelDP.over(PlainLoRA(), ClientLevelDPParams(clip=0.3, sigma=0.0)))
    d.setup(fed)
    view = d.observe(d.protect(_update(client, trained, prev)))
    delta = _flat({n: LoRAFactors(m.A - prev[n].A, m.B - prev[n].B) for n, m in view.modules.items()})
    assert float(delta.norm()) == pytest.approx(0.3, rel=1e-4)
    small = {n: LoRAFactors(p.A + 1e-4, p.B, p.scale) for n, p in prev.items()}
    view = d.observe(d.protect(_update(client, small, prev)))
    for n, m in view.modules.items():
        torch.testing.assert_close(m.A, small[n].A)


def test_noise_is_seeded_per_client_round_and_kind():
    fed = _fed()
    gen = torch.Generator().manual_seed(3)
    c0 = fed.clients[0]
    prev = _factors(c0, gen)
    d = Duo(ClientLevelDP.over(PlainLoRA(), ClientLevelDPParams(sigma=1.0)))
    d.setup(fed)
    a = d.protect(_update(c0, prev, prev)).plain
    b = d.protect(_update(c0, prev, prev)).plain
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = d.protect(_update(c0, prev, prev, kind="sgd")).plain
    assert not torch.equal(a["l0.q_proj/A"], c["l0.q_proj/A"])


def test_without_noise_and_clipping_aggregate_equals_plain_lora():
    fed = _fed()
    gen = torch.Generator().manual_seed(4)
    updates = [_update(c, _factors(c, gen), _factors(c, gen), n=5 + c.client_id) for c in fed.clients]
    dp, plain = Duo(ClientLevelDP.over(PlainLoRA(), ClientLevelDPParams(clip=1e6, sigma=0.0))), Duo(PlainLoRA())
    dp.setup(fed)
    plain.setup(fed)
    got = dp.aggregate([dp.protect(u) for u in updates])
    ref = plain.aggregate([plain.protect(u) for u in updates])
    for c in fed.clients:
        g, r = dp.finalize(got, c), plain.finalize(ref, c)
        for n in SHAPES:
            torch.testing.assert_close(g[n].delta(), r[n].delta(), atol=1e-5, rtol=1e-4)


def test_gradient_probe_is_clipped_and_noised_as_is():
    fed = _fed()
    gen = torch.Generator().manual_seed(5)
    c0 = fed.clients[0]
    grads = _factors(c0, gen, std=1.0)
    d = Duo(ClientLevelDP.over(PlainLoRA(), ClientLevelDPParams(clip=0.1, sigma=0.0)))
    d.setup(fed)
    view = d.observe(d.protect(_update(c0, grads, _factors(c0, gen), kind="grad")))
    got = _flat({n: LoRAFactors(m.A, m.B) for n, m in view.modules.items()})
    assert float(got.norm()) == pytest.approx(0.1, rel=1e-4)
    assert view.modules["l0.q_proj"].A is not None


def test_epsilon_agrees_with_the_rdp_accountant():
    from opacus.accountants import RDPAccountant

    fed = _fed(rounds=100, per_round=1, n_clients=10)  # q = 0.1
    d = Duo(ClientLevelDP.over(PlainLoRA(), ClientLevelDPParams(sigma=1.0, delta=1e-5)))
    d.setup(fed)
    acc = RDPAccountant()
    acc.history = [(1.0, 0.1, 100)]
    pp = d.privacy_params()
    assert pp["epsilon"] == pytest.approx(acc.get_epsilon(1e-5))
    assert pp["epsilon"] == pytest.approx(7.9, abs=0.1)  # independent measurement (research notes)
    assert pp["sample_rate"] == pytest.approx(0.1)
    assert {"sigma", "clip", "delta", "accountant"} <= set(pp)
    no_amp = Duo(ClientLevelDP.over(PlainLoRA(), ClientLevelDPParams(sigma=1.0, amplification=False)))
    no_amp.setup(fed)
    assert no_amp.privacy_params()["epsilon"] > 3 * pp["epsilon"]


def test_target_epsilon_solves_sigma():
    sigma = solve_sigma(8.0, 0.1, 100, 1e-5)
    assert sigma == pytest.approx(0.99, abs=0.02)
    assert epsilon_for(sigma, 0.1, 100, 1e-5) <= 8.0
    fed = _fed(rounds=100, per_round=1, n_clients=10)
    d = Duo(ClientLevelDP.over(PlainLoRA(), ClientLevelDPParams(target_epsilon=8.0)))
    d.setup(fed)
    assert d.privacy_params()["sigma"] == pytest.approx(sigma)
    assert math.isinf(epsilon_for(0.0, 0.1, 10, 1e-5))


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"sigma": -1.0}, "dp.sigma must be >= 0"),
        ({"delta": 1.0}, "dp.delta must be in (0, 1), got 1.0"),
        ({"clip": 0.0}, "dp.clip must be > 0"),
        ({"accountant": "gdpx"}, "dp.accountant must be one of rdp, prv"),
        ({"target_epsilon": -2.0}, "dp.target_epsilon must be >= 0"),
    ],
)
def test_bad_parameters_are_one_line_errors(params, needle):
    with pytest.raises(ConfigError) as info:
        params_from_dict(ClientLevelDPParams, params, "dp")
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
