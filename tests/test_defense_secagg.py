"""SecAgg+ (Flower's primitives): the sum equals FlexLoRA's up to quantization, the server sees only
masked vectors, a dropout after sharing is survived, too many dropouts fail with the reason, every
protocol message is metered, and settings that cannot work are refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.common import bytes_to_ndarray

from benchmark.config import ConfigError, params_from_dict
from benchmark.contract import ClientInfo, ClientUpdate, FederationInfo, LoRAFactors
from benchmark.federation.protocol import aggregate, exchange, negotiate, setup_roles, upload
from benchmark.federation.reference import aggregation_error, reference_aggregate
from benchmark.federation.transcript import Channel
from benchmark.running.validate import check_defenses
from defenses.common import read_broadcast
from defenses.plain_lora import PlainLoRA
from defenses.secagg import SecAgg, SecAggParams, dropped_clients
from defenses.secagg_protocol import SecAggError

SHAPES = {"l0.q_proj": (24, 16), "l0.v_proj": (16, 16)}


def _fed(ranks=(2, 4, 3, 4)) -> FederationInfo:
    clients = tuple(ClientInfo(i, "t", r, 0.1, 8.0) for i, r in enumerate(ranks))
    return FederationInfo(clients, SHAPES, 2, len(ranks), 3)


def _updates(fed: FederationInfo, seed: int = 0) -> list[ClientUpdate]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in fed.clients:
        factors = {n: LoRAFactors(torch.randn(c.rank, k, generator=gen) * 0.05, torch.randn(m, c.rank, generator=gen) * 0.05,
                                  c.scale) for n, (m, k) in SHAPES.items()}
        out.append(ClientUpdate(c, 1, factors, 10 + 7 * c.client_id, {}))
    return out


def _round(defense, fed, updates, drop=(), rnd=1):
    """One round through the engines' protocol steps; clients in ``drop`` share their keys and
    shares, then never upload their masked vector."""
    channel = Channel()
    setup_roles(defense, fed, channel)
    negotiate(defense, updates, rnd, channel)
    participants = [u.client for u in updates]
    exchange(defense, participants, [], rnd, channel)
    sent = (upload(defense, u, rnd, channel) for u in updates if u.client.client_id not in drop)
    uploads = [u for u in sent if u is not None]  # None: a simulated dropout (``dropouts``) sent nothing
    exchange(defense, participants, [u.payload for u in uploads], rnd, channel)
    message, _ = aggregate(defense, uploads)
    return channel, uploads, message


def _agg_rel_err(defense, message, updates, clients) -> float:
    """The driver's ``agg_rel_err``: each client's finalized delta against the float64 reference."""
    ref = reference_aggregate(updates)
    return max(aggregation_error(defense.client.finalize(message, c), ref, c) for c in clients)


def _dense(message):
    return {n: (d.U * d.S) @ d.Vh for n, d in read_broadcast(message).items()}


@pytest.mark.parametrize("bits", [30, 16])
def test_sum_is_the_flexlora_aggregate_up_to_quantization(bits):
    fed = _fed()
    updates = _updates(fed)
    d = SecAgg(SecAggParams(quantization_bits=bits, modulus_bits=bits + 8, clipping_range=1.0))
    _, _, message = _round(d, fed, updates)
    err = _agg_rel_err(d, message, updates, fed.clients)
    plain = PlainLoRA()
    _, _, ref_message = _round(plain, fed, updates)
    got, want = _dense(message), _dense(ref_message)
    broadcast_err = max(float(torch.linalg.norm(got[n] - want[n]) / torch.linalg.norm(want[n])) for n in SHAPES)
    if bits == 30:  # steps of 2^-29 on weighted values ~1e-4: errors near 1e-6
        assert err < 1e-4 and broadcast_err < 1e-4, (err, broadcast_err)
    else:  # 2^-15 steps: the quantization error is visible, and still bounded
        assert 1e-4 < err < 0.2 and 1e-4 < broadcast_err < 0.2, (err, broadcast_err)


def test_the_server_sees_only_masked_vectors_and_uniform_residues():
    fed = _fed()
    updates = _updates(fed)
    d = SecAgg()
    channel, uploads, _ = _round(d, fed, updates)
    assert all(not m.payload.plain for m in channel.transcript.messages if m.direction == "up")
    modulus, quant = 2**d.params.modulus_bits, 2**d.params.quantization_bits
    for u in uploads:
        view = d.server.observe(u.payload)
        assert view.modules == {} and not view.has_plaintext and "n_samples" not in view.leaked
        assert "n_samples" not in u.payload.meta  # the weights are summed in secret too
        masked = np.concatenate([bytes_to_ndarray(b).ravel() for b in u.payload.cipher["masked"]])
        assert masked.size == 1 + sum(m * n for m, n in SHAPES.values())
        assert masked.min() >= 0 and masked.max() < modulus
        # unmasked, every entry is below 2^quantization_bits; masked, most lie far above it
        assert float(np.mean(masked >= quant)) > 0.9
    # the attacks get nothing per client, so they are reported incompatible
    assert "masked vector" in d.server.observe(uploads[0].payload).note


def test_a_client_dropping_after_sharing_leaves_the_survivors_sum():
    fed = _fed()
    updates = _updates(fed)
    d = SecAgg()  # 4 participants, 4 shares each, threshold 3
    channel, uploads, message = _round(d, fed, updates, drop={2})
    assert [u.payload.meta["client_id"] for u in uploads] == [0, 1, 3]
    assert message.meta["survivors"] == [0, 1, 3]
    survivors = [u for u in updates if u.client.client_id != 2]
    assert _agg_rel_err(d, message, survivors, fed.clients) < 1e-4
    # without client 2's sk1 shares its pairwise masks would stay in the sum: the unmask requests named it dead
    asks = [m for m in channel.transcript.messages if m.direction == "down" and m.payload.meta.get("stage") == "unmask"]
    assert len(asks) == 3 and all(m.payload.meta["dead"] == [2] for m in asks)


def test_a_secagg_plus_ring_of_three_shares_survives_a_dropout():
    fed = _fed(ranks=(2, 4, 3, 4, 2))
    updates = _updates(fed, seed=1)
    d = SecAgg(SecAggParams(num_shares=3, reconstruction_threshold=2))
    channel, _, message = _round(d, fed, updates, drop={4})
    keys = [m for m in channel.transcript.messages if m.payload.meta.get("stage") == "share_keys" and m.direction == "down"]
    assert all(len(m.payload.meta["ids"]) == 3 for m in keys)  # each client knows its two neighbours and itself
    survivors = [u for u in updates if u.client.client_id != 4]
    assert _agg_rel_err(d, message, survivors, fed.clients) < 1e-4


def test_too_many_dropouts_fail_the_round_with_the_reason():
    fed = _fed()
    updates = _updates(fed)
    with pytest.raises(SecAggError, match=r"2 of 4 clients sent a masked vector, fewer than the reconstruction threshold 3"):
        _round(SecAgg(), fed, updates, drop={1, 2})


def test_every_protocol_message_is_metered():
    fed = _fed()
    updates = _updates(fed)
    d = SecAgg()
    channel, uploads, message = _round(d, fed, updates)
    meter, msgs = channel.meter, channel.transcript.messages
    values = 1 + sum(m * n for m, n in SHAPES.values())
    assert all(b >= 8 * values for b in meter.up) and len(meter.up) == 4  # int64 residues, one upload each
    stages = [m.payload.meta.get("stage") for m in msgs if m.kind == "negotiation"]
    assert stages.count("advertise_keys") == 4 and stages.count("share_keys") == 8 and stages.count("unmask") == 8
    assert stages.count("forward_shares") == 4
    assert meter.negotiation == sum(m.payload.nbytes() for m in msgs if m.kind == "negotiation")
    shares_up = [m.payload.cipher_bytes() for m in msgs if m.direction == "up" and m.payload.meta.get("stage") == "share_keys"]
    assert all(b > 3 * 100 for b in shares_up)  # three encrypted share pairs, one per neighbour


def test_an_upload_outside_the_round_is_masked_for_good():
    fed = _fed()
    updates = _updates(fed)
    d = SecAgg()
    _round(d, fed, updates)
    extra = d.client.protect(updates[0])  # e.g. an attack probe after the round
    assert extra.meta["in_session"] is False and not extra.plain
    assert d.server.observe(extra).modules == {}


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"num_shares": 2}, "secagg.num_shares must be 0 (every participant) or >= 3"),
        ({"num_shares": 3, "reconstruction_threshold": 4}, "secagg.reconstruction_threshold=4 is above num_shares=3"),
        ({"clipping_range": 0.0}, "secagg.clipping_range must be a finite number > 0"),
        ({"quantization_bits": 31}, "secagg.quantization_bits must be in 1 .. 30"),
        ({"quantization_bits": 24, "modulus_bits": 24}, "secagg.modulus_bits must be in 25 .. 48"),
    ],
)
def test_bad_parameters_are_one_line_errors(params, needle):
    with pytest.raises(ConfigError) as info:
        params_from_dict(SecAggParams, params, "secagg")
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"reconstruction_threshold": 5}, "reconstruction_threshold=5 is above the 4 shares per client"),
        ({"num_shares": 5}, "num_shares=5 is above clients_per_round=4"),
        ({"quantization_bits": 30, "modulus_bits": 31}, "modulus_bits=31 cannot hold the sum of 4 values"),
    ],
)
def test_settings_the_federation_cannot_run_are_refused_before_any_work(params, needle):
    why = SecAgg.check(SecAggParams(**params), _fed())
    assert why is not None and needle in why and "\n" not in why
    assert SecAgg.check(SecAggParams(), _fed()) is None


def test_the_harness_refuses_a_threshold_above_the_tiny_scenarios_clients():
    from benchmark.contract.stacks import Layer, Stack
    from benchmark.running.catalog import resolve_scenario

    stack = Stack((Layer("secagg", SecAgg, SecAggParams(reconstruction_threshold=3)),))
    with pytest.raises(ConfigError, match=r"defense\.secagg\.reconstruction_threshold=3 is above the 2 shares"):
        check_defenses(resolve_scenario("tiny"), "secagg", stack)


def test_a_survivor_silent_at_unmasking_is_covered_by_the_others_shares():
    fed = _fed()
    updates = _updates(fed)
    d = SecAgg()  # threshold 3 of 4: three answers rebuild every secret
    answer = d.client.answer

    def silent_3(message, client):
        if client.client_id == 3 and message.meta["stage"] == "unmask":
            return None
        return answer(message, client)

    d.client.answer = silent_3
    _, uploads, message = _round(d, fed, updates)
    assert len(uploads) == 4 and message.meta["survivors"] == [0, 1, 2, 3]
    assert _agg_rel_err(d, message, updates, fed.clients) < 1e-4


def test_fresh_keys_and_masks_give_the_same_sum():
    fed = _fed()
    updates = _updates(fed)
    (_, up1, m1), (_, up2, m2) = _round(SecAgg(), fed, updates), _round(SecAgg(), fed, updates)
    assert up1[0].payload.cipher["masked"] != up2[0].payload.cipher["masked"]  # masks differ run to run
    assert all(torch.equal(m1.plain[k], m2.plain[k]) for k in m1.plain)  # quantization is seeded, masks cancel


def test_the_tiny_federation_runs_secagg_in_process():
    from benchmark.engines import inproc
    from benchmark.running.catalog import resolve_scenario

    torch.set_num_threads(1)
    driver = inproc.build_driver(resolve_scenario("tiny", {"rounds": 1}), SecAgg(), 0)
    metrics = driver.run().metrics
    assert metrics["agg_rel_err"] < 1e-4
    values = 1 + sum(m * n for m, n in driver.fed.module_shapes.values())
    assert metrics["bytes_up_per_client_round"] >= 8 * values  # the masked dense deltas
    assert metrics["negotiation_bytes"] > 0  # keys, encrypted shares and unmask shares
    stages = {m.payload.meta.get("stage") for m in driver.channel.transcript.messages}
    assert {"advertise_keys", "share_keys", "forward_shares", "unmask", "masked_vector"} <= stages


# ---- simulated dropouts (``SecAggParams.dropouts``) ----------------------------------------------


def test_a_simulated_dropout_vanishes_after_sharing_and_the_survivors_sum_is_recovered():
    fed = _fed()
    updates = _updates(fed)
    d = SecAgg(SecAggParams(dropouts=1))  # 4 participants, threshold 3
    gone = dropped_clients(fed.seed, 1, [0, 1, 2, 3], 1)
    assert len(gone) == 1 and gone == dropped_clients(fed.seed, 1, [3, 2, 1, 0], 1)  # a draw from seed and round
    assert {tuple(dropped_clients(fed.seed, r, [0, 1, 2, 3], 1)) for r in range(1, 9)} != {tuple(gone)}
    channel, uploads, message = _round(d, fed, updates)
    alive = [c for c in range(4) if c not in gone]
    assert [u.payload.meta["client_id"] for u in uploads] == alive
    assert message.meta["survivors"] == alive
    survivors = [u for u in updates if u.client.client_id in alive]
    assert _agg_rel_err(d, message, survivors, fed.clients) < 1e-4  # the survivors' sum, up to quantization
    assert _agg_rel_err(d, message, updates, fed.clients) > 1e-3  # and not everyone's
    sent_by = {(m.payload.meta.get("stage"), m.clients[0]) for m in channel.transcript.messages if m.direction == "up"}
    assert ("share_keys", gone[0]) in sent_by  # it shared its keys, then sent nothing more
    assert ("unmask", gone[0]) not in sent_by and ("masked_vector", gone[0]) not in sent_by


def test_the_tiny_federation_survives_a_dropout_per_round():
    from benchmark.engines import inproc
    from benchmark.running.catalog import resolve_scenario

    torch.set_num_threads(1)
    scenario = resolve_scenario("tiny", {"rounds": 2, "clients_per_round": 3})  # threshold 2 of 3
    result = inproc.build_driver(scenario, SecAgg(SecAggParams(dropouts=1)), 0).run()
    for rnd in result.rounds:
        assert len(rnd["silent"]) == 1 and rnd["silent"][0] in rnd["clients"]
    assert result.metrics["agg_rel_err"] < 1e-4  # against the survivors' float64 aggregate


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"dropouts": 2}, "dropouts=2 leaves 2 of clients_per_round=4 clients to upload, fewer than the reconstruction "
                          "threshold 3: every round would fail; use dropouts <= 1"),
        ({"dropouts": 1, "num_shares": 3, "reconstruction_threshold": 3},
         "dropouts=1 with reconstruction_threshold=3 equal to the 3 shares per client"),
    ],
)
def test_dropouts_that_fail_every_round_are_refused_before_any_work(params, needle):
    why = SecAgg.check(SecAggParams(**params), _fed())
    assert why is not None and needle in why and "\n" not in why
    assert SecAgg.check(SecAggParams(dropouts=1), _fed()) is None
    with pytest.raises(ConfigError, match="secagg.dropouts must be >= 0"):
        params_from_dict(SecAggParams, {"dropouts": -1}, "secagg")


def test_the_harness_refuses_dropouts_the_tiny_rounds_cannot_survive():
    from benchmark.contract.stacks import Layer, Stack
    from benchmark.running.catalog import resolve_scenario

    stack = Stack((Layer("secagg", SecAgg, SecAggParams(dropouts=1)),))
    with pytest.raises(ConfigError, match=r"defense\.secagg\.dropouts=1 leaves 1 of clients_per_round=2 .* "
                                          r"use dropouts <= 0 or clients_per_round >= 3"):
        check_defenses(resolve_scenario("tiny"), "secagg", stack)


def test_a_round_that_loses_too_many_shares_fails_its_row_with_the_reason_and_the_run_goes_on(tmp_path):
    """A SecAgg+ ring of 3 shares (threshold 2) in rounds of 4: two dropouts pass the check (2 survivors
    reach the threshold), yet in a ring of four either a dropped client keeps one live neighbour or a
    survivor keeps none, so some secret always lacks a share: known only once the ring is drawn."""
    import dataclasses

    from benchmark.config import ComponentSpec
    from benchmark.running import Overrides, execute, plan, resolve_suite

    ring = {"num_shares": 3, "reconstruction_threshold": 2, "dropouts": 2}
    suite = dataclasses.replace(resolve_suite("smoke"), defenses=(ComponentSpec("secagg", "secagg_ring", ring),
                                                                  ComponentSpec("secagg", "secagg")))
    groups = plan(suite, Overrides({"rounds": 1, "clients_per_round": 4}, {}, {}))
    rows = execute(groups, tmp_path / "run", "cpu", quiet=True)
    assert [(r["defense"], r["status"]) for r in rows] == [("secagg_ring", "failed"), ("secagg", "ok")]
    assert rows[0]["error"].startswith("SecAggError: ")
    assert "fewer than the reconstruction threshold 2" in rows[0]["error"]
    assert rows[1]["agg_rel_err"] < 1e-4
