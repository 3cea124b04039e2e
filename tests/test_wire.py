import torch

from benchmark.contract import WirePayload
from benchmark.federation.wire import WireMeter


def test_payload_counts_plain_cipher_and_meta_bytes():
    p = WirePayload("client:0", plain={"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float64)},
                    cipher={"c": b"x" * 100, "d": [b"y" * 10, b"z" * 7]}, meta={"rank": 4}, timings={"enc_s": 9.0})
    assert p.plain_bytes() == 3 * 4 * 4 + 5 * 8
    assert p.cipher_bytes() == 117
    assert p.meta_bytes() == len(b'{"rank":4}')
    assert p.nbytes() == 48 + 40 + 117 + 10  # timings never count as traffic


def test_meter_averages_per_client_round_and_counts_broadcast_per_receiver():
    meter = WireMeter()
    meter.send_up(WirePayload("c0", plain={"x": torch.zeros(10)}))
    meter.send_up(WirePayload("c1", plain={"x": torch.zeros(30)}, cipher={"k": b"1234"}))
    meter.send_down(WirePayload("server", plain={"y": torch.zeros(5)}, meta={}), receivers=2)
    s = meter.summary()
    assert s["bytes_up_per_client_round"] == (40 + 2 + 120 + 4 + 2) / 2
    assert s["cipher_bytes_up"] == 2.0
    assert len(meter.down) == 2 and s["bytes_down_per_client_round"] == 20 + 2
