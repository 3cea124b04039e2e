"""Distributed DP (``dp+secagg``): each client adds a noise share sigma*C/sqrt(m) in the summed space,
the unmasked sum carries sigma*C (more when more than m survive, never less), the server sees only
masked vectors, epsilon is the accountant's for sigma, and a range that cannot hold the noise is a
one-line error before any work."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.common import bytes_to_ndarray

from benchmark.config import ConfigError
from benchmark.contract import ClientInfo, ClientUpdate, FederationInfo, LoRAFactors
from benchmark.contract.plugins import DEFENSES
from benchmark.contract.stacks import build_defense, resolve_stack
from benchmark.federation.protocol import aggregate, exchange, negotiate, setup_roles, upload
from benchmark.federation.transcript import Channel
from benchmark.running.validate import check_defenses
from defenses import secagg as secagg_module
from defenses.dp import epsilon_for, solve_sigma

SHAPES = {"l0.q_proj": (64, 48), "l0.v_proj": (48, 48)}  # 5376 coordinates: std to ~1% sampling error
COORDS = sum(m * n for m, n in SHAPES.values())
MAX_WEIGHT = 1000.0
T = 2**30


def _fed(k: int = 4, rounds: int = 3, n_clients: int | None = None) -> FederationInfo:
    clients = tuple(ClientInfo(i, "t", r, 0.1, 8.0) for i, r in enumerate((2, 4, 3, 4, 2, 4, 3, 4)[: n_clients or k]))
    return FederationInfo(clients, SHAPES, rounds, k, 7)


def _updates(fed: FederationInfo, change: float = 0.01) -> list[ClientUpdate]:
    """Clients that moved ``change`` (per factor entry) away from a start they share with the server."""
    gen = torch.Generator().manual_seed(3)
    out = []
    for c in fed.clients[: fed.clients_per_round]:
        prev = {n: LoRAFactors(torch.randn(c.rank, k, generator=gen) * 0.3, torch.randn(m, c.rank, generator=gen) * 0.3,
                               c.scale) for n, (m, k) in SHAPES.items()}
        now = {n: LoRAFactors(f.A + change * torch.randn(f.A.shape, generator=gen),
                              f.B + change * torch.randn(f.B.shape, generator=gen), f.scale) for n, f in prev.items()}
        out.append(ClientUpdate(c, 1, now, 10 + 7 * c.client_id, {}, prev=prev))
    return out


def _defense(sigma=1.0, clip=1.0, threshold=0, clipping_range=8.0, name="dp+secagg"):
    params = {"dp": {"sigma": sigma, "clip": clip}}
    if name.endswith("secagg"):
        params["secagg"] = {"reconstruction_threshold": threshold, "clipping_range": clipping_range,
                            "max_weight": MAX_WEIGHT}
    return build_defense(name, params)


def _weight(u: ClientUpdate) -> float:
    return round(u.n_samples / MAX_WEIGHT * T) / T  # secagg's client-side multiplier q_i / T


def _dense(factors) -> np.ndarray:
    return np.concatenate([factors[n].delta().double().numpy().ravel() for n in sorted(factors)])


def _round(d, fed, updates, monkeypatch, drop=()):
    """One round through the engines' protocol steps, recording what each client's noise share
    turned its summands into and the sum the server unmasked (before its rank truncation)."""
    channel = Channel()
    setup_roles(d, fed, channel)
    shares = {}
    share = d.client.inner.privatizer

    def recording(update, vectors, weight, min_summands):
        out = share(update, vectors, weight, min_summands)
        shares[update.client.client_id] = (np.concatenate([v.ravel() for v in vectors]),
                                           np.concatenate([v.ravel() for v in out]), min_summands)
        return out

    d.client.inner.privatizer = recording
    unmasked = []
    unmask_sum = secagg_module.sa.unmask_sum

    def spy(masked, *args):
        mean = unmask_sum(masked, *args)
        unmasked.append(mean)
        return mean

    monkeypatch.setattr(secagg_module.sa, "unmask_sum", spy)
    negotiate(d, updates, 1, channel)
    participants = [u.client for u in updates]
    exchange(d, participants, [], 1, channel)
    uploads = [upload(d, u, 1, channel) for u in updates if u.client.client_id not in drop]
    exchange(d, participants, [u.payload for u in uploads], 1, channel)
    message, _ = aggregate(d, uploads)
    survivors = [u for u in updates if u.client.client_id not in drop]
    mean = np.concatenate([v.ravel() for v in unmasked[0]])
    return channel, uploads, message, shares, mean * sum(_weight(u) for u in survivors), survivors


@pytest.mark.parametrize(("threshold", "drop", "sum_std"), [(4, (), 1.0), (2, (), math.sqrt(2)), (2, (1, 2), 1.0)])
def test_shares_sum_to_the_target_noise_and_dropouts_never_leave_less(monkeypatch, threshold, drop, sum_std):
    sigma, clip = 1.0, 1.0
    fed = _fed()
    updates = _updates(fed)
    d = _defense(sigma, clip, threshold)
    _, _, _, shares, total, survivors = _round(d, fed, updates, monkeypatch, drop)
    for before, after, m in shares.values():
        assert m == threshold
        own = after - before  # small changes are not clipped: the difference is the client's noise alone
        assert abs(own.std() / (sigma * clip / math.sqrt(threshold)) - 1) < 0.06, own.std()
    clean = sum(_weight(u) * _dense(u.factors) for u in survivors)
    noise = total - clean
    assert abs(noise.std() / (sigma * clip * sum_std) - 1) < 0.06, noise.std()
    assert abs(noise.mean()) < 5 * noise.std() / math.sqrt(COORDS)


def test_each_client_clips_its_dense_change_before_the_noise(monkeypatch):
    fed = _fed()
    updates = _updates(fed, change=0.5)  # dense changes far above the clip
    clip = 0.05
    _, _, _, shares, total, _ = _round(_defense(sigma=0.0, clip=clip), fed, updates, monkeypatch)
    want = 0.0
    for u in updates:
        w, start = _weight(u), _dense(u.prev)
        change = _dense(u.factors) - start
        assert np.linalg.norm(change) > 10 * clip
        before, after, _ = shares[u.client.client_id]
        np.testing.assert_allclose(np.linalg.norm(after - w * start), w * clip, rtol=1e-9)
        want = want + w * (start + change * clip / np.linalg.norm(change))
    # the unmasked sum is the sum of clipped changes plus starts, up to 30-bit quantization of [-8, 8]
    assert np.abs(total - want).max() < len(updates) * 16 / 2**29


def test_the_server_sees_only_masked_vectors_and_the_factors_travel_unnoised(monkeypatch):
    fed = _fed()
    updates = _updates(fed)
    d = _defense()
    channel, uploads, _, _, _, _ = _round(d, fed, updates, monkeypatch)
    assert all(not m.payload.plain for m in channel.transcript.messages if m.direction == "up")
    for u in uploads:
        view = d.server.observe(u.payload)
        assert view.modules == {} and not view.has_plaintext
        masked = np.concatenate([bytes_to_ndarray(b).ravel() for b in u.payload.cipher["masked"]])
        assert float(np.mean(masked >= T)) > 0.9  # unmasked, every entry is below 2^30; masked, most lie above
    # distributed mode: the dp layer hands the inner defense the update as it is (no factor noise)
    assert d.client.distributed and d.client.transform(updates[0]) is updates[0]
    plain_dp = _defense(name="dp+plain_lora")
    plain_dp.client.setup(fed)
    assert not plain_dp.client.distributed and plain_dp.client.transform(updates[0]) is not updates[0]


@pytest.mark.parametrize("target", [0.0, 4.0])
def test_epsilon_is_the_accountants_for_the_sums_sigma(monkeypatch, target):
    fed = _fed(k=4, rounds=5, n_clients=8)
    updates = _updates(fed)
    params = {"dp": {"sigma": 1.3, "clip": 1.0, "target_epsilon": target, "delta": 1e-5},
              "secagg": {"reconstruction_threshold": 3, "clipping_range": 8.0}}
    d = build_defense("dp+secagg", params)
    _round(d, fed, updates, monkeypatch)
    privacy = d.privacy_params()
    sigma = solve_sigma(target, 0.5, 5, 1e-5) if target else 1.3
    assert privacy["sigma"] == pytest.approx(sigma)
    assert privacy["epsilon"] == pytest.approx(epsilon_for(sigma, 0.5, 5, 1e-5))
    if target:
        assert privacy["epsilon"] <= target
    assert privacy["level"] == "distributed" and privacy["min_summands"] == 3
    assert privacy["sigma_share"] == pytest.approx(sigma / math.sqrt(3))
    assert d.column_values(privacy)["dp_sigma"] == pytest.approx(sigma)
    # the same sigma over uploads seen one by one spends the same epsilon, each upload carrying it all
    local = build_defense("dp+plain_lora", {"sigma": sigma})
    local.client.setup(fed)
    local.server.setup(fed, [])
    assert local.privacy_params()["epsilon"] == pytest.approx(privacy["epsilon"])
    assert local.privacy_params()["level"] == "client"


def _stack(params):
    return resolve_stack("dp+secagg", params, "defense.dp+secagg", DEFENSES)


def test_a_range_that_cannot_hold_the_noise_is_a_one_line_error_before_any_work():
    from benchmark.running.catalog import resolve_scenario

    tiny = resolve_scenario("tiny")  # two clients a round: threshold 2, a share of sigma*C/sqrt(2)
    check_defenses(tiny, "dp+secagg", _stack({}))  # the bare stack works: Flower's default range (8) holds dp's default noise
    with pytest.raises(ConfigError) as info:
        check_defenses(tiny, "dp+secagg", _stack({"dp": {"sigma": 2.0, "clip": 1.0}}))
    msg = str(info.value)
    assert msg.startswith("defense.dp+secagg.secagg.clipping_range=8 cannot hold dp's noise share") and "\n" not in msg
    assert "use secagg.clipping_range >= 10.9" in msg
    check_defenses(tiny, "dp+secagg", _stack({"dp": {"sigma": 2.0, "clip": 1.0}, "secagg": {"clipping_range": 11.0}}))
    check_defenses(tiny, "dp+plain_lora", resolve_stack("dp+plain_lora", {}, "defense.dp+plain_lora", DEFENSES))


def test_the_tiny_federation_runs_dp_secagg_in_process():
    from benchmark.engines import inproc
    from benchmark.running.catalog import resolve_scenario

    torch.set_num_threads(1)
    d = build_defense("dp+secagg", {"dp": {"sigma": 0.5, "clip": 0.05}, "secagg": {"clipping_range": 1.0}})
    driver = inproc.build_driver(resolve_scenario("tiny", {"rounds": 1}), d, 0)
    metrics = driver.run().metrics
    privacy = d.privacy_params()
    assert privacy["level"] == "distributed" and privacy["min_summands"] == 2
    assert privacy["epsilon"] == pytest.approx(epsilon_for(0.5, 0.5, 1, 1e-5))
    values = 1 + sum(m * n for m, n in driver.fed.module_shapes.values())
    assert metrics["bytes_up_per_client_round"] >= 8 * values  # masked dense deltas, like secagg alone
