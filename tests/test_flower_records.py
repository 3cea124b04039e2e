"""A WirePayload's plaintext tensors travel packed in one Flower ``Array`` (``benchmark.engines.records``):
every tensor comes back with its bytes, dtype and shape, and a LoRA-sized payload is a handful of
Flower objects instead of two per tensor (each object is one request per hop of a deployment)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr", reason="flwr is not installed (scripts/setup.sh installs it)")

from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects  # noqa: E402

from benchmark.contract import WirePayload  # noqa: E402
from benchmark.engines.records import PLAIN, content, pack, read_payload, unpack  # noqa: E402


def odd_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "i64": torch.arange(5, dtype=torch.int64),
        "empty": torch.zeros(0, 7),
        "transposed": torch.randn(2, 3, generator=g).t(),  # not contiguous
        "scalar f64": torch.tensor(3.25, dtype=torch.float64),
        "bool": torch.tensor([True, False, True]),
        "f16 after odd offset": torch.randn(3, generator=g).to(torch.float16),
    }


def test_pack_then_unpack_gives_every_tensor_back_exactly():
    tensors = odd_tensors()
    record, index = pack(tensors)
    back = unpack(record, index)
    assert list(back) == list(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
        assert torch.equal(back[name], t), name
    back["f32"][0, 0] = 99.0  # a copy, not a view of the message's buffer
    assert unpack(record, index)["f32"][0, 0] != 99.0


def test_a_payload_survives_its_records_with_ciphertexts_and_meta():
    tensors = odd_tensors()
    payload = WirePayload("client 3", tensors, {"one": b"\x00\x01", "many": [b"a", b"bc"], "none": []}, {"round": 2})
    got = read_payload(content(payload))
    assert got.sender == "client 3" and got.meta == {"round": 2}
    assert got.cipher == {"one": b"\x00\x01", "many": [b"a", b"bc"], "none": []}
    assert all(torch.equal(got.plain[k], t) for k, t in tensors.items())
    assert read_payload(content(WirePayload("c", {}, {}, {}))).plain == {}


def test_a_lora_sized_update_is_a_handful_of_objects():
    """120 factors (30 layers x 2 modules x A and B) of rank 8 on a 576-wide model: unpacked this
    was 240 objects (an Array and its chunk per tensor); packed, an ArrayRecord, one Array, one chunk."""
    tensors = {f"layer{i}.{m}.{ab}": torch.randn(8, 576) if ab == "A" else torch.randn(576, 8)
               for i in range(30) for m in ("q", "v") for ab in ("A", "B")}
    record = content(WirePayload("c", tensors, {}, {}))[PLAIN]
    objects = get_all_nested_objects(record)
    assert len(objects) <= 3, len(objects)
    assert sum(t.numel() * 4 for t in tensors.values()) <= sum(len(o.deflate()) for o in objects.values())
