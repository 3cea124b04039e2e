"""Full HE: the server cannot decrypt, sees no plaintext, and the aggregate equals plaintext FlexLoRA."""

from __future__ import annotations

import pytest
import torch
from duo import Duo

from benchmark.config import ConfigError, params_from_dict
from benchmark.contract import ClientInfo, ClientUpdate, FederationInfo, LoRAFactors
from defenses.full_he import FullHE, FullHEParams, chunk_lengths
from defenses.plain_lora import PlainLoRA
from she_lora import ckks

SHAPES = {"l0.q_proj": (24, 16), "l0.v_proj": (16, 16)}


def _fed(ranks=(2, 4, 3)) -> FederationInfo:
    clients = tuple(ClientInfo(i, "t", r, 0.0, 8.0) for i, r in enumerate(ranks))
    return FederationInfo(clients, SHAPES, 2, len(ranks), 7)


def _updates(fed: FederationInfo, seed: int = 0) -> list[ClientUpdate]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in fed.clients:
        factors = {
            name: LoRAFactors(torch.randn(c.rank, n, generator=gen) * 0.05, torch.randn(m, c.rank, generator=gen) * 0.05, c.scale)
            for name, (m, n) in SHAPES.items()
        }
        out.append(ClientUpdate(c, 1, factors, 10 + 7 * c.client_id, {}))
    return out


def _round(defense, fed, updates):
    defense.setup(fed)
    payloads = [defense.protect(u) for u in updates]
    message = defense.aggregate(payloads)
    return payloads, message, {c.client_id: defense.finalize(message, c) for c in fed.clients}


def _assert_close_to_plain(got, fed, updates, rtol=1e-5):
    _, _, ref = _round(Duo(PlainLoRA()), fed, updates)
    for cid, factors in ref.items():
        for name, f in factors.items():
            want = f.delta()
            err = torch.linalg.norm(got[cid][name].delta() - want) / torch.linalg.norm(want)
            assert float(err) < rtol, (cid, name, float(err))


@pytest.fixture(scope="module")
def fed_updates():
    fed = _fed()
    return fed, _updates(fed)


@pytest.mark.parametrize("packing", ["dense", "per_column"])
@pytest.mark.parametrize("aggregation", ["stack", "lift"])
def test_aggregate_equals_plaintext_flexlora(fed_updates, packing, aggregation):
    fed, updates = fed_updates
    d = Duo(FullHE(FullHEParams(packing=packing, aggregation=aggregation)))
    payloads, message, got = _round(d, fed, updates)
    assert all(not p.plain for p in payloads) and not message.plain
    assert all(p.timings["enc_s"] > 0 for p in payloads) and "agg_s" in message.timings
    _assert_close_to_plain(got, fed, updates)


def test_dense_and_per_column_agree_and_differ_in_bytes(fed_updates):
    fed, updates = fed_updates
    dense_p, _, dense = _round(Duo(FullHE(FullHEParams(packing="dense"))), fed, updates)
    col_p, _, col = _round(Duo(FullHE(FullHEParams(packing="per_column"))), fed, updates)
    for cid in dense:
        for name in SHAPES:
            torch.testing.assert_close(dense[cid][name].delta(), col[cid][name].delta(), atol=1e-7, rtol=1e-5)
    # client 1 (rank 4): one ciphertext per A column and per B row, against one dense ciphertext
    assert len(col_p[1].cipher["values"]) == sum(m + n for m, n in SHAPES.values())
    assert len(dense_p[1].cipher["values"]) == 1
    assert col_p[1].cipher_bytes() > 50 * dense_p[1].cipher_bytes()


def test_server_context_cannot_decrypt(fed_updates):
    fed, updates = fed_updates
    d = Duo(FullHE())
    d.setup(fed)
    payload = d.protect(updates[0])
    public = ckks.public_context_bytes(d.client._client_ctx)
    server = ckks.load_public_context(public)
    with pytest.raises(PermissionError):
        ckks.decrypt_packed(server, payload.cipher["values"], 8)
    with pytest.raises(PermissionError):
        ckks.decrypt_packed(d.server._server_ctx, payload.cipher["values"], 8)
    with pytest.raises(ValueError):
        ckks.load_secret_context(public)
    assert not d.server._server_ctx.has_secret_key and d.client._client_ctx.has_secret_key
    # the lift is computed on the server, with the public context alone
    lift = Duo(FullHE(FullHEParams(aggregation="lift")))
    lift.setup(fed)
    message = lift.aggregate([lift.protect(u) for u in updates])
    with pytest.raises(PermissionError):
        ckks.decrypt_packed(lift.server._server_ctx, message.cipher["delta"], 8)


def test_attacker_sees_ciphertext_bytes_only(fed_updates):
    fed, updates = fed_updates
    d = Duo(FullHE())
    d.setup(fed)
    payload = d.protect(updates[2])
    view = d.observe(payload)
    assert view.modules == {} and not view.has_plaintext
    assert view.cipher_bytes == payload.cipher_bytes() > 0
    assert view.note == "ciphertext only"
    assert d.privacy_params()["encrypted_fraction"] == 1.0


def test_chunk_lengths():
    assert chunk_lengths([3, 3, 5], "dense", 4) == [4, 4, 3]
    assert chunk_lengths([3, 3, 5], "per_column", 4) == [3, 3, 4, 1]
    assert chunk_lengths([], "dense", 4) == []


def test_lift_refuses_paper_scale_dense_deltas(fed_updates):
    fed, updates = fed_updates
    d = Duo(FullHE(FullHEParams(aggregation="lift", lift_max_values=100)))
    d.setup(fed)
    with pytest.raises(ValueError, match="use aggregation='stack'"):
        d.protect(updates[0])


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"packing": "sparse"}, "full_he.packing must be one of dense, per_column"),
        ({"aggregation": "sum"}, "full_he.aggregation must be one of stack, lift"),
        ({"scale_bits": 24}, "scale_bits must be in [30, 59]"),
        ({"n_workers": 0}, "full_he.n_workers must be >= 1"),
    ],
)
def test_bad_parameters_are_one_line_errors(params, needle):
    with pytest.raises(ConfigError) as info:
        params_from_dict(FullHEParams, params, "full_he")
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
