"""The channel between the roles: wire copies, metering by message kind, the server's transcript, and
cost columns that mean the same in both engines."""

from __future__ import annotations

import pytest
import torch

from benchmark.contract import WirePayload
from benchmark.engines import cost, inproc
from benchmark.federation.transcript import Channel, wire_copy
from benchmark.running import resolve_scenario
from defenses import DEFENSES


def test_wire_copy_shares_no_memory_and_drops_timings():
    sent = WirePayload("client:0", plain={"a": torch.ones(3)}, cipher={"c": [b"x"]}, meta={"k": (1, 2)},
                       timings={"enc_s": 1.0})
    got = wire_copy(sent)
    assert got.nbytes() == sent.nbytes()
    got.plain["a"].add_(1)
    got.cipher["c"].append(b"y")
    assert torch.equal(sent.plain["a"], torch.ones(3)) and sent.cipher["c"] == [b"x"]
    assert got.timings == {} and got.meta == {"k": [1, 2]}


def test_channel_meters_by_kind_and_records_what_the_server_saw():
    ch = Channel()
    up = WirePayload("client:3", plain={"x": torch.zeros(10)})
    ch.up(up, 1, 3, "negotiation")
    ch.up(up, 1, 3, "upload")
    ch.up(up, 1, 3, "probe", metered=False)
    ch.down(WirePayload("server", plain={"y": torch.zeros(5)}), 1, [3, 4], "broadcast")
    s = ch.meter.summary()
    assert s["negotiation_bytes"] == up.nbytes() and s["bytes_up_per_client_round"] == up.nbytes()
    assert len(ch.meter.up) == 1 and len(ch.meter.down) == 2  # the probe is recorded, never metered
    kinds = [(m.kind, m.direction, m.clients) for m in ch.transcript.messages]
    assert kinds == [("negotiation", "up", (3,)), ("upload", "up", (3,)), ("probe", "up", (3,)),
                     ("broadcast", "down", (3, 4))]
    with pytest.raises(ValueError, match="unknown message kind"):
        ch.up(up, 1, 3, "gossip")


def test_start_message_is_the_last_model_message_before_the_upload():
    ch = Channel()
    msg = WirePayload("server", plain={"y": torch.zeros(1)})
    ch.down(msg, 1, [0], "init")
    ch.up(msg, 1, 0, "upload")
    ch.down(msg, 1, [0, 1], "broadcast")
    ch.down(msg, 2, [1], "broadcast")
    ch.up(msg, 2, 1, "upload")
    assert ch.transcript.start_message(0, 1).kind == "init"
    assert ch.transcript.start_message(1, 2).round == 2  # the catch-up, not the end of round 1
    with pytest.raises(ValueError, match="sent nothing"):
        ch.transcript.start_message(1, 1)


@pytest.mark.parametrize("engine", ["inproc", "cost"])
def test_plaintext_defenses_report_no_encryption_time_in_either_engine(engine):
    torch.set_num_threads(1)
    if engine == "inproc":
        scenario = resolve_scenario("tiny", {"rounds": 1})
        run = inproc.simulate
    else:
        scenario = resolve_scenario("tiny", {"kind": "cost", "rounds": 1, "cost": {"layers": 1, "out_features": 32,
                                                                                     "in_features": 32}})
        assert scenario.engine == "cost"  # a cost scenario's engine unless it names another
        run = cost.simulate
    plain = run(scenario, DEFENSES.get("plain_lora")(), 0).metrics
    she = run(scenario, DEFENSES.get("she_lora")(), 0).metrics
    assert plain["enc_s"] is None
    assert she["enc_s"] is not None and she["enc_s"] > 0


def test_clients_that_missed_a_round_receive_the_global_model_before_training():
    torch.set_num_threads(1)
    scenario = resolve_scenario("tiny", {"rounds": 3})
    driver = inproc.build_driver(scenario, DEFENSES.get("plain_lora")(), 0)
    driver.run()
    transcript = driver.channel.transcript
    later = [m for m in transcript.messages if m.kind == "upload" and m.round > 1]
    assert len(later) == 2 * scenario.clients_per_round
    for m in later:
        start = transcript.start_message(m.clients[0], m.round)
        assert start is not None and start.kind == "broadcast" and start.round >= m.round - 1


def test_sampled_cost_rows_extrapolate_linearly_and_say_so():
    torch.set_num_threads(1)
    base = {"kind": "cost", "rounds": 1, "cost": {"layers": 2, "out_features": 16, "in_features": 16}}
    per_column = DEFENSES.get("full_he").Params(packing="per_column")  # ciphertexts per column: linear in modules
    whole = cost.simulate(resolve_scenario("tiny", base), DEFENSES.get("full_he")(per_column), 0).metrics
    sampled_cfg = resolve_scenario("tiny", {**base, "cost": {**base["cost"], "sample_modules": 1}})
    sampled = cost.simulate(sampled_cfg, DEFENSES.get("full_he")(per_column), 0).metrics
    assert "extrapolation" not in whole
    e = sampled["extrapolation"]
    assert e["extrapolated"] and (e["sample_modules"], e["modules"]) == (1, 4) and "x 4" in e["formula"]
    # per-column ciphertexts are linear in modules: the estimate lands on the measured whole
    assert sampled["cipher_bytes_up"] == pytest.approx(whole["cipher_bytes_up"], rel=0.05)
