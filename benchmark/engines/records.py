"""WirePayloads as Flower message records, and the size of a Flower message on the wire.

A ``WirePayload`` becomes three records: its plaintext tensors an ``ArrayRecord`` (``wire_plain``),
its ciphertexts a ``ConfigRecord`` of bytes or lists of bytes (``wire_cipher``), and its sender and
JSON metadata a ``ConfigRecord`` (``wire_meta``). Timings never travel (they are the sender's
measurements, not traffic), exactly as ``benchmark.federation.transcript.wire_copy`` drops them.

The plaintext tensors travel packed: their bytes end to end in one ``Array`` (``packed``), with each
tensor's name, dtype, shape and offset in ``wire_meta`` (``plain_index``). Why: Flower moves every
``Array`` and each of its chunks as an object of its own, one HTTP request per object per hop, so a
LoRA update of some 120 tensors took about 240 requests per hop and most of a deployment's message
time (2-3 s to push one 15 MB broadcast on loopback); packed, it is one object per 5 MB chunk. The
bytes are the tensors' own, unchanged; only the framing around them shrinks.

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

import numpy as np
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
PACKED = "packed"  # the one Array of wire_plain


def pack(tensors: dict[str, torch.Tensor]) -> tuple[ArrayRecord, list[list[Any]]]:
    """``tensors`` as one ``Array`` of their bytes end to end, and the index that unpacks it:
    ``[name, dtype, shape, offset]`` per tensor, in order."""
    arrays = {k: t.detach().cpu().contiguous().numpy() for k, t in tensors.items()}
    index, offset = [], 0
    for k, a in arrays.items():
        index.append([k, a.dtype.str, list(a.shape), offset])
        offset += a.nbytes
    if not arrays:
        return ArrayRecord(), index
    packed = np.concatenate([a.reshape(-1).view(np.uint8) for a in arrays.values()])
    return ArrayRecord({PACKED: Array.from_numpy_ndarray(packed)}), index


def unpack(record: ArrayRecord, index: Sequence[Sequence[Any]]) -> dict[str, torch.Tensor]:
    """The tensors ``pack`` packed, each a copy of its bytes with its dtype and shape."""
    if not index:
        return {}
    data = record[PACKED].numpy()
    out = {}
    for name, dtype, shape, offset in index:
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = torch.from_numpy(np.frombuffer(data, np.dtype(dtype), count, int(offset)).reshape(shape).copy())
    return out


def payload_records(payload: WirePayload) -> dict[str, ArrayRecord | ConfigRecord]:
    """The records that carry ``payload``; a list of ciphertexts stays a list (even of length one)."""
    plain, index = pack(payload.plain)
    cipher = ConfigRecord({k: (bytes(v) if isinstance(v, bytes | bytearray) else [bytes(b) for b in v])
                           for k, v in payload.cipher.items() if isinstance(v, bytes | bytearray) or v})
    empty_lists = [k for k, v in payload.cipher.items() if not isinstance(v, bytes | bytearray) and not v]
    meta = ConfigRecord({"sender": payload.sender, "empty_lists": json.dumps(empty_lists),
                         "plain_index": json.dumps(index, separators=(",", ":")),
                         "json": json.dumps(payload.meta, separators=(",", ":"), default=json_default)})
    return {PLAIN: plain, CIPHER: cipher, META: meta}


def read_payload(content: RecordDict) -> WirePayload | None:
    """The ``WirePayload`` a message carries, or None when it carries none."""
    if META not in content:
        return None
    meta = content.config_records[META]
    plain = unpack(content.array_records[PLAIN], json.loads(str(meta["plain_index"])))
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
