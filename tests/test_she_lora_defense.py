"""The she_lora defense end to end: exact aggregation, key roles, nesting, views, clear errors."""

from __future__ import annotations

import pytest
import torch
from duo import Duo
from test_she_lora_helpers import federation, random_update, reference

from benchmark.config import ConfigError, params_from_dict
from benchmark.contract import ClientInfo, ClientUpdate, LoRAFactors
from defenses.she_lora import SHELoRADefense, SHELoRAParams
from she_lora import ckks
from she_lora.lowrank import relative_error, to_lora

SHAPES = {"l0.q": (24, 40), "l1.v": (16, 30)}
RANKS, BUDGETS = (4, 8, 16), (0.1, 0.2, 0.35)


def run_round(params: SHELoRAParams, shapes: dict = SHAPES, ranks: tuple = RANKS, budgets: tuple = BUDGETS) -> tuple:
    fed = federation(shapes, ranks, budgets)
    d = Duo(SHELoRADefense(params))
    d.setup(fed)
    updates = [random_update(c, shapes) for c in fed.clients]
    msgs = d.negotiate(updates)
    payloads = [d.protect(u) for u in updates]
    return d, fed, updates, msgs, payloads, d.aggregate(payloads)


@pytest.mark.parametrize(
    "params",
    [
        SHELoRAParams(),
        SHELoRAParams(leakage="plain", send_scores=True),
        SHELoRAParams(leakage="plain", swap=False),
        SHELoRAParams(lift="server_lift"),
        SHELoRAParams(lift="server_lift", leakage="plain", n_workers=2),
    ],
    ids=["client_ope", "client_plain_scores", "client_noswap", "server_ope", "server_plain_2workers"],
)
def test_aggregate_equals_flexlora(params: SHELoRAParams) -> None:
    d, fed, updates, _, payloads, message = run_round(params)
    ref = reference(updates)
    fused = d.client.fused_deltas(message)
    for name, (_, n) in SHAPES.items():
        assert relative_error(fused[name].dense(), ref[name].dense()) <= 1e-5
        g = d.client.side.globals[1][name]
        assert any(c < n - len(g) for c in g)  # the selection is not just the trailing columns
    for client in fed.clients:
        mine = d.finalize(message, client)
        for name, f in mine.items():
            assert f.A.shape == (client.rank, SHAPES[name][1]) and f.scale == client.scale
            A, B = to_lora(ref[name], client.rank, client.scale)
            assert relative_error(f.delta(), client.scale * (B @ A)) <= 1e-5
    assert all(p.cipher_bytes() > 0 for p in payloads) and message.timings["agg_s"] > 0
    assert "enc_s" in payloads[0].timings


def test_server_holds_no_secret_key() -> None:
    d, *_, message = run_round(SHELoRAParams())
    server_ctx = d.server.side.ctx
    assert not server_ctx.has_secret_key and d.client.side.ctx.has_secret_key
    with pytest.raises(PermissionError, match="no secret key"):
        ckks.decrypt_packed(server_ctx, message.cipher["lift"], 10)
    assert ckks.decrypt_packed(d.client.side.ctx, message.cipher["lift"], 10).shape == (10,)


def test_budgets_nest_and_global_order_survives() -> None:
    d, fed, updates, msgs, payloads, _ = run_round(SHELoRAParams(leakage="plain"))
    assert len(msgs) == len(updates) + 1 and msgs[-1].sender == "server"
    assert all("scores" not in m.meta for m in msgs)
    global_lists = msgs[-1].meta["global"]
    for name in SHAPES:
        g = global_lists[name]
        ks = [d.server.plan.k[c.client_id][name] for c in fed.clients]
        assert len(g) == max(ks) == len(set(g))
        for p, k in zip(payloads, ks):
            view = d.observe(p)
            assert view.leaked["encrypted_columns"][name] == g[:k]  # a prefix of one ordered list
            hidden_cols = view.modules[name].A_hidden.all(dim=0).nonzero().flatten().tolist()
            assert sorted(hidden_cols) == sorted(g[:k])


def test_observe_clones_and_zeroes_hidden_columns() -> None:
    d, fed, updates, _, payloads, _ = run_round(SHELoRAParams(leakage="plain"))
    for u, p in zip(updates, payloads):
        view = d.observe(p)
        for name, mod in view.modules.items():
            A = u.factors[name].A
            assert torch.equal(mod.A[~mod.A_hidden], A[~mod.A_hidden]) and (mod.A[mod.A_hidden] == 0).all()
            assert torch.equal(mod.B, u.factors[name].B) and not mod.columns_permuted
            assert mod.A.untyped_storage().data_ptr() != A.untyped_storage().data_ptr()
            assert mod.B.untyped_storage().data_ptr() != u.factors[name].B.untyped_storage().data_ptr()
            mod.B.zero_()
            assert u.factors[name].B.abs().sum() > 0
        assert view.cipher_bytes == p.cipher_bytes() and view.kind == "weights"


def test_ope_view_is_permuted_and_hides_indices() -> None:
    d, fed, updates, msgs, payloads, _ = run_round(SHELoRAParams(leakage="ope"))
    view = d.observe(payloads[2])
    assert "encrypted_columns" not in view.leaked and "global_list_ope_codes" in view.leaked
    for name, mod in view.modules.items():
        assert mod.columns_permuted and mod.column_order is None
        layout = d.client.side.layouts[1][name]
        expect = layout.apply(updates[2].factors[name].A).clone()
        expect[mod.A_hidden] = 0
        assert torch.equal(mod.A, expect)
        codes = msgs[-1].meta["global"][name]
        assert codes == sorted(codes) or codes != d.client.side.globals[1][name]  # codes, not indices


def test_protect_needs_a_negotiation_then_probes_and_rounds_work() -> None:
    fed = federation(SHAPES, RANKS, BUDGETS)
    d = Duo(SHELoRADefense(SHELoRAParams(sensitivity_refresh=1)))
    d.setup(fed)
    probe = random_update(fed.clients[1], SHAPES, kind="grad")
    with pytest.raises(ValueError, match="negotiate in this round before protect"):
        d.protect(probe)  # no inline (unmetered) negotiation: the lists must cross the channel first
    for rnd in (1, 2):
        updates = [random_update(c, SHAPES, rnd=rnd) for c in fed.clients]
        msgs = d.negotiate(updates)
        assert all("topk" in m.meta for m in msgs[:-1])  # first lists, then a refresh every round
        reply = msgs[-1].meta
        assert "global" in reply and reply["version"] == rnd and reply["round"] == rnd
        assert reply["clients"] == [c.client_id for c in fed.clients]
        assert reply["n_total"] == sum(u.n_samples for u in updates)
        message = d.aggregate([d.protect(u) for u in updates])
        ref = reference(updates)
        assert max(relative_error(f.dense(), ref[n].dense()) for n, f in d.client.fused_deltas(message).items()) <= 1e-5
        # after the round's negotiation, a participant's probe update is protected with its lists
        probe = random_update(fed.clients[1], SHAPES, rnd=rnd, seed=1, kind="grad")
        sent = d.protect(probe)
        assert sent.meta["version"] == rnd and sent.timings["enc_s"] > 0
        view = d.observe(sent)
        assert view.kind == "grad" and all(m.A_hidden.any() for m in view.modules.values())
        k = d.server.plan.k[1]
        assert all(int(m.A_hidden.all(dim=0).sum()) == k[n] for n, m in view.modules.items())
    assert d.client.version == d.server.side.version == 2


def test_no_renegotiation_without_refresh() -> None:
    fed = federation(SHAPES, RANKS, BUDGETS)
    d = Duo(SHELoRADefense(SHELoRAParams()))
    d.setup(fed)
    first = d.negotiate([random_update(c, SHAPES, rnd=1) for c in fed.clients])
    second = d.negotiate([random_update(c, SHAPES, rnd=2) for c in fed.clients])
    assert "global" in first[-1].meta and "global" not in second[-1].meta
    assert second[-1].meta["version"] == first[-1].meta["version"] == 1 and second[-1].meta["round"] == 2
    assert second[-1].nbytes() < first[-1].nbytes() and "topk" not in second[0].meta


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget_scale": 1.5}, r"budget_scale must be in \(0, 1\]"),
        ({"budget_scale": 0.0}, r"budget_scale must be in \(0, 1\]"),
        ({"lift": "magic"}, "lift must be one of"),
        ({"leakage": "ope", "swap": False}, "needs swap"),
        ({"scale_bits": 24}, "scale_bits"),
        ({"sensitivity_refresh": -1}, "sensitivity_refresh"),
        ({"lift": "server_lift", "coeff_mod_bit_sizes": (60, 60)}, "level"),
    ],
)
def test_bad_params_are_one_line(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        SHELoRAParams(**kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=match):
        params_from_dict(SHELoRAParams, kwargs, "defense.she_lora")


def test_bad_federations_and_updates() -> None:
    with pytest.raises(ValueError, match=r"budgets must be in \[0, 1\]"):
        Duo(SHELoRADefense()).setup(federation(SHAPES, (4, 8), (0.1, 1.5)))
    zero = federation(SHAPES, (4, 8), (0.1, 0.2))
    zero = type(zero)((ClientInfo(0, "t", 0, 0.1, 16.0),) + zero.clients[1:], SHAPES, 1, 2, 0)
    with pytest.raises(ValueError, match="rank 0"):
        Duo(SHELoRADefense()).setup(zero)
    d, fed, updates, *_ = run_round(SHELoRAParams())
    bad = updates[0]
    wrong = {n: LoRAFactors(f.A[:, :-1], f.B, f.scale) for n, f in bad.factors.items()}
    with pytest.raises(ValueError, match="expected A"):
        d.protect(ClientUpdate(bad.client, bad.round, wrong, bad.n_samples, bad.input_sq_norms))


def test_ciphertexts_of_another_federation_are_refused() -> None:
    d1, *_, p1, _ = run_round(SHELoRAParams())
    _, _, _, _, p2, _ = run_round(SHELoRAParams())
    with pytest.raises(ValueError, match="another CKKS context"):
        d1.aggregate([p1[0], p2[1], p1[2]])


def test_setup_costs_and_privacy_params() -> None:
    fed = federation(SHAPES, RANKS, BUDGETS)
    d = Duo(SHELoRADefense(SHELoRAParams(budget_scale=0.5)))
    costs = d.setup(fed)
    assert costs["context_bytes"] > costs["public_context_bytes"] > 0 and costs["keygen_s"] >= 0
    pp = d.privacy_params()
    assert 0 < pp["encrypted_fraction"] < 0.15 and pp["lift"] == "client_lift" and pp["leakage"] == "ope"


@pytest.mark.parametrize("lift", ["client_lift", "server_lift"])
def test_zero_budget_client_sends_no_ciphertext(lift: str) -> None:
    shapes = {"only": (12, 20)}
    d, fed, updates, _, payloads, message = run_round(SHELoRAParams(lift=lift), shapes, (2, 4, 6), (0.0, 0.0, 0.15))
    assert payloads[0].cipher_bytes() == 0 and payloads[2].cipher_bytes() > 0
    assert "enc_s" not in payloads[0].timings and payloads[2].timings["enc_s"] > 0  # nothing encrypted, no time
    ref = reference(updates)
    assert relative_error(d.client.fused_deltas(message)["only"].dense(), ref["only"].dense()) <= 1e-5
