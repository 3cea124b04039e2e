"""WirePayloads as Flower message records, and the size of a Flower message on the wire.

A ``WirePayload`` becomes three records: its plaintext tensors an ``ArrayRecord`` (``wire_plain``),
its ciphertexts a ``ConfigRecord`` of bytes or lists of bytes (``wire_cipher``), and its sender and
JSON metadata a ``ConfigRecord`` (``wire_meta``). Timings never travel (they are the sender's
measurements, not traffic), exactly as ``benchmark.federation.transcript.wire_copy`` drops them.

The harness (the referee that scores attacks and utility) also needs a client's private results,
e.g. the raw update that ``agg_rel_err`` compares against. Those ride in a separate ``harness``
record, which is pickled Python, never enters the server's transcript or the attacker's view, and is
excluded from every byte count.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import (
    InflatableObject,
    get_all_nested_objects,
    no_object_id_recompute,
)

from benchmark.contract import WirePayload, json_default

PLAIN, CIPHER, META, HARNESS = "wire_plain", "wire_cipher", "wire_meta", "harness"
WIRE_KEYS = (PLAIN, CIPHER, META)


def payload_records(payload: WirePayload) -> dict[str, ArrayRecord | ConfigRecord]:
    """The records that carry ``payload``; a list of ciphertexts stays a list (even of length one)."""
    plain = ArrayRecord({k: Array.from_numpy_ndarray(t.detach().cpu().contiguous().numpy())
                         for k, t in payload.plain.items()})
    cipher = ConfigRecord({k: (bytes(v) if isinstance(v, bytes | bytearray) else [bytes(b) for b in v])
                           for k, v in payload.cipher.items() if isinstance(v, bytes | bytearray) or v})
    empty_lists = [k for k, v in payload.cipher.items() if not isinstance(v, bytes | bytearray) and not v]
    meta = ConfigRecord({"sender": payload.sender, "empty_lists": json.dumps(empty_lists),
                         "json": json.dumps(payload.meta, separators=(",", ":"), default=json_default)})
    return {PLAIN: plain, CIPHER: cipher, META: meta}


def read_payload(content: RecordDict) -> WirePayload | None:
    """The ``WirePayload`` a message carries, or None when it carries none."""
    if META not in content:
        return None
    meta = content.config_records[META]
    plain = {k: torch.from_numpy(a.numpy().copy()) for k, a in content.array_records[PLAIN].items()}
    cipher: dict[str, bytes | list[bytes]] = {
        k: (v if isinstance(v, bytes) else list(v)) for k, v in content.config_records[CIPHER].items()
    }
    cipher.update({k: [] for k in json.loads(str(meta["empty_lists"]))})
    return WirePayload(str(meta["sender"]), plain, cipher, json.loads(str(meta["json"])))


def content(payload: WirePayload | None = None, harness: dict[str, Any] | None = None,
            records: dict[str, ArrayRecord | ConfigRecord] | None = None) -> RecordDict:
    """A message's content: the payload's records (``records``: built already, shared by the messages
    that carry one payload) and the harness record (pickled), either optional."""
    if records is None:
        records = payload_records(payload) if payload is not None else {}
    records = dict(records)
    if harness is not None:
        records[HARNESS] = harness_record(harness)
    return RecordDict(records)


def harness_record(harness: dict[str, Any]) -> ConfigRecord:
    """The harness record (pickled Python: never in the transcript or a byte count)."""
    return ConfigRecord({"pickle": pickle.dumps(harness, protocol=pickle.HIGHEST_PROTOCOL)})


def read_harness(content: RecordDict) -> dict[str, Any]:
    if HARNESS not in content:
        return {}
    return pickle.loads(content.config_records[HARNESS]["pickle"])  # noqa: S301 (our own processes)


def message_bytes(message: Message) -> int:
    """Bytes Flower moves for ``message`` minus its harness record: every object of the message's
    tree (message, metadata, record dict, records, arrays and their chunks) as Flower serializes it."""
    return message_sizes([message])[0]


def message_sizes(messages: Sequence[Message]) -> list[int]:
    """``message_bytes`` of each message, counted as Flower's own push walks them: each object's id
    computed once (``no_object_id_recompute``; without it a parent's id re-deflates and re-hashes its
    whole subtree, and counting one 80 MB SHE-LoRA broadcast took 5.8 s instead of 0.9 s), and a
    record that several messages share (one broadcast to several clients) deflated once."""
    sizes: dict[int, int] = {}

    def size(obj: InflatableObject) -> int:
        if id(obj) not in sizes:
            sizes[id(obj)] = len(obj.deflate())
        return sizes[id(obj)]

    out = []
    with no_object_id_recompute():
        for message in messages:
            total = sum(size(obj) for obj in get_all_nested_objects(message).values())
            if HARNESS in message.content:
                total -= sum(size(obj) for obj in get_all_nested_objects(message.content[HARNESS]).values())
            out.append(total)
    return out
