"""MaskCrypt: budget 0 is plain_lora, budget 1 hides everything, exact aggregation, consensus."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from duo import Duo

from benchmark.config import ConfigError, params_from_dict
from benchmark.contract import ClientInfo, ClientUpdate, FederationInfo, LoRAFactors
from defenses.maskcrypt import MaskCrypt, MaskCryptParams, consensus, hidden_count
from defenses.plain_lora import PlainLoRA

SHAPES = {"l0.q_proj": (24, 16), "l0.v_proj": (16, 16)}


def _fed(ranks=(2, 4, 3), budgets=(0.05, 0.2, 0.1)) -> FederationInfo:
    clients = tuple(ClientInfo(i, "t", r, b, 8.0) for i, (r, b) in enumerate(zip(ranks, budgets)))
    return FederationInfo(clients, SHAPES, 2, len(ranks), 3)


def _rand(gen, *shape, std=0.05):
    return torch.randn(*shape, generator=gen) * std


def _make(gen, c: ClientInfo) -> dict[str, LoRAFactors]:
    return {n: LoRAFactors(_rand(gen, c.rank, k), _rand(gen, m, c.rank), c.scale) for n, (m, k) in SHAPES.items()}


def _updates(fed: FederationInfo, seed: int = 0, kind: str = "weights") -> list[ClientUpdate]:
    gen = torch.Generator().manual_seed(seed)
    return [
        ClientUpdate(c, 1, _make(gen, c), 10 + 7 * c.client_id, {}, grads=_make(gen, c), prev=_make(gen, c), kind=kind)
        for c in fed.clients
    ]


def _round(defense, fed, updates, negotiate=True):
    defense.setup(fed)
    if negotiate:
        defense.negotiate(updates)
    payloads = [defense.protect(u) for u in updates]
    message = defense.aggregate(payloads)
    return payloads, message, {c.client_id: defense.finalize(message, c) for c in fed.clients}


def _assert_matches_plain(got, fed, updates, rtol=1e-5):
    _, _, ref = _round(Duo(PlainLoRA()), fed, updates)
    for cid, factors in ref.items():
        for name, f in factors.items():
            err = torch.linalg.norm(got[cid][name].delta() - f.delta()) / torch.linalg.norm(f.delta())
            assert float(err) < rtol, (cid, name, float(err))


def test_budget_zero_is_plain_lora_exactly():
    fed = _fed()
    updates = _updates(fed)
    payloads, message, got = _round(Duo(MaskCrypt(MaskCryptParams(budget=0.0))), fed, updates)
    ref_payloads, ref_message, ref = _round(Duo(PlainLoRA()), fed, updates)
    assert all(not p.cipher for p in payloads)
    assert all("enc_s" not in p.timings for p in payloads)  # nothing encrypted, no encryption time
    for p, q in zip(payloads, ref_payloads):
        assert p.plain.keys() == q.plain.keys() and all(torch.equal(p.plain[k], q.plain[k]) for k in q.plain)
    assert all(torch.equal(message.plain[k], ref_message.plain[k]) for k in ref_message.plain)
    for cid in ref:
        for name in SHAPES:
            assert torch.equal(got[cid][name].A, ref[cid][name].A) and torch.equal(got[cid][name].B, ref[cid][name].B)


def test_budget_one_hides_every_coordinate_and_stays_exact():
    fed = _fed()
    updates = _updates(fed)
    d = Duo(MaskCrypt(MaskCryptParams(budget=1.0)))
    payloads, message, got = _round(d, fed, updates)
    for u, p in zip(updates, payloads):
        assert not any(k.endswith(("/A", "/B")) for k in p.plain)
        assert p.timings["enc_s"] > 0
        view = d.observe(p)
        assert not view.has_plaintext
        for name, mod in view.modules.items():
            assert bool(mod.A_hidden.all()) and bool(mod.B_hidden.all())
            assert tuple(mod.A_hidden.shape) == tuple(u.factors[name].A.shape)
            assert tuple(mod.B_hidden.shape) == tuple(u.factors[name].B.shape)
    assert not any(k.endswith(("/A", "/B")) for k in message.plain)
    _assert_matches_plain(got, fed, updates)


def test_tier_budgets_with_consensus_are_exact_and_nested():
    fed = _fed()
    updates = _updates(fed)
    d = Duo(MaskCrypt())
    d.setup(fed)
    msgs = d.negotiate(updates)
    assert len(msgs) == len(updates) + 1 and "consensus" in msgs[-1].plain
    assert all("proposal" in m.plain for m in msgs[:-1])
    # the consensus reaches the client role only through the reply, equal to the server's own list
    agreed = d.client._consensus[1]
    assert len(agreed) > 0 and np.array_equal(agreed, d.server._consensus[1])
    assert np.array_equal(agreed, msgs[-1].plain["consensus"].numpy())
    payloads = [d.protect(u) for u in updates]
    names = sorted(SHAPES)
    for u, p in zip(updates, payloads):
        want = hidden_count(names, SHAPES, u.client.rank, u.client.budget, "all")
        assert p.meta["n_hidden"] == want > 0 and p.meta["mask"] == "consensus"
        assert "hidden_keys" not in p.plain  # the server derives the mask from the public consensus
        view = d.observe(p)
        hidden = sum(int(m.A_hidden.sum() + m.B_hidden.sum()) for m in view.modules.values())
        assert hidden == want
        for name, mod in view.modules.items():  # hidden coordinates are zero in what the server holds
            assert float(mod.A[mod.A_hidden].abs().sum()) == 0.0 and float(mod.B[mod.B_hidden].abs().sum()) == 0.0
            torch.testing.assert_close(mod.A[~mod.A_hidden], u.factors[name].A[~mod.A_hidden])
    message = d.aggregate(payloads)
    _assert_matches_plain({c.client_id: d.finalize(message, c) for c in fed.clients}, fed, updates)


def test_same_rank_clients_hide_nested_sets():
    fed = _fed(ranks=(4, 4), budgets=(0.05, 0.2))
    updates = _updates(fed)
    d = Duo(MaskCrypt())
    d.setup(fed)
    d.negotiate(updates)
    small, large = (d.observe(d.protect(u)).modules for u in updates)
    for name in SHAPES:
        assert not bool((small[name].A_hidden & ~large[name].A_hidden).any())
        assert not bool((small[name].B_hidden & ~large[name].B_hidden).any())


def test_grad_selection_hides_the_most_important_coordinates():
    fed = _fed(budgets=(0.01, 0.01, 0.01))
    u = _updates(fed)[1]
    factors = {n: LoRAFactors(f.A.clone(), f.B.clone(), f.scale) for n, f in u.prev.items()}  # zero update
    factors["l0.v_proj"].A[1, 5] += 3.0  # big update and big gradient there
    factors["l0.q_proj"].B[7, 2] += 2.0
    u = dataclasses.replace(u, factors=factors)
    d = Duo(MaskCrypt(MaskCryptParams(budget=0.01)))  # ceil(0.01 * 4 * 80) = 4 coordinates
    d.setup(fed)
    view = d.observe(d.protect(u))
    assert bool(view.modules["l0.v_proj"].A_hidden[1, 5]) and bool(view.modules["l0.q_proj"].B_hidden[7, 2])
    assert view.leaked["mask"] == "own"  # no negotiation this round: the client's own proposal


def test_probe_without_consensus_sends_its_keys_and_stays_exact():
    fed = _fed()
    updates = _updates(fed, kind="grad")
    d = Duo(MaskCrypt(MaskCryptParams(selection="random")))
    payloads, _, got = _round(d, fed, updates, negotiate=False)
    assert all("hidden_keys" in p.plain for p in payloads)
    _assert_matches_plain(got, fed, updates)


def test_probe_in_a_negotiated_round_hides_its_own_proposal():
    fed = _fed()
    updates = _updates(fed)
    d = Duo(MaskCrypt())
    d.setup(fed)
    d.negotiate(updates)
    probe = dataclasses.replace(updates[1], kind="grad")
    p = d.protect(probe)
    assert p.meta["mask"] == "own" and p.timings["enc_s"] > 0
    own = np.sort(d.client.ranked(probe))
    assert np.array_equal(p.plain["hidden_keys"].numpy(), own)  # its keys travel in plaintext
    view = d.observe(p)
    assert view.leaked["mask"] == "own"
    assert sum(int(m.A_hidden.sum() + m.B_hidden.sum()) for m in view.modules.values()) == len(own) > 0


def test_observe_clones():
    fed = _fed()
    updates = _updates(fed)
    d = Duo(MaskCrypt(MaskCryptParams(budget=0.1)))
    d.setup(fed)
    view = d.observe(d.protect(updates[0]))
    mod = view.modules["l0.q_proj"]
    assert mod.A.data_ptr() != updates[0].factors["l0.q_proj"].A.data_ptr()
    assert view.cipher_bytes > 0


def test_consensus_orders_by_votes_then_position():
    props = [np.array([5, 1, 9]), np.array([1, 7]), np.array([7, 1])]
    assert consensus(props).tolist() == [1, 7, 5, 9]


def test_she_lora_basis_matches_the_column_budget():
    fed = _fed(ranks=(4,), budgets=(0.125,))
    d = Duo(MaskCrypt(MaskCryptParams(basis="she_lora")))
    d.setup(fed)
    assert d.privacy_params()["encrypted_fraction"] == pytest.approx(16 / (4 * 72))
    names = sorted(SHAPES)
    assert hidden_count(names, SHAPES, 4, 0.125, "she_lora") == 4 * 2 + 4 * 2  # ceil(0.125 * 16) columns
    assert hidden_count(names, SHAPES, 4, 1.0, "all") == 4 * (40 + 32)
    assert hidden_count(names, SHAPES, 4, 0.0, "all") == 0


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"budget": 1.5}, "maskcrypt.budget must be in [0, 1]"),
        ({"budget": -0.1}, "maskcrypt.budget must be in [0, 1]"),
        ({"selection": "topk"}, "maskcrypt.selection must be one of grad, random"),
        ({"basis": "cols"}, "maskcrypt.basis must be one of all, she_lora"),
    ],
)
def test_bad_parameters_are_one_line_errors(params, needle):
    with pytest.raises(ConfigError) as info:
        params_from_dict(MaskCryptParams, params, "maskcrypt")
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
