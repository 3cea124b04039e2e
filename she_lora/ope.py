"""A keyed, deterministic order-preserving encoding of column indices for the negotiation.

The clients share a key the server lacks. Each index j in [0, n) maps to code(j) = sum_{i<=j} d_i
with increments d_i in [1, 2^16] drawn from SHAKE-256 of the key and a label (the module name), so
equal indices give equal codes across clients (the server can count them), larger indices give larger
codes (it can order them), and without the key the codes do not name columns.

Leakage model, stated rather than hidden: any OPE reveals order and, statistically, approximate
position (code / mean increment ~ index). This is the classic OPE leakage; it is far less than plain
indices but not semantic security. The public SHE-LoRA code's OPE had no key at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_GAP_BITS = 16


class KeyedOPE:
    """Order-preserving codes for indices [0, domain) under ``key`` and ``label``."""

    def __init__(self, key: bytes, domain: int, label: str = "") -> None:
        if domain < 1:
            raise ValueError(f"OPE domain must be >= 1, got {domain}")
        stream = hashlib.shake_256(key + b"\x00" + label.encode()).digest(4 * domain)
        gaps = np.frombuffer(stream, dtype="<u4").astype(np.int64) % (1 << _GAP_BITS) + 1
        self.domain = domain
        self._table = np.cumsum(gaps)

    def encode(self, indices: Sequence[int]) -> list[int]:
        arr = np.asarray(indices, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.domain):
            raise ValueError(f"OPE: index out of [0, {self.domain})")
        return [int(c) for c in self._table[arr]]

    def decode(self, codes: Sequence[int]) -> list[int]:
        arr = np.asarray(codes, dtype=np.int64)
        pos = np.searchsorted(self._table, arr)
        if arr.size and (pos.max() >= self.domain or not np.array_equal(self._table[np.minimum(pos, self.domain - 1)], arr)):
            raise ValueError("OPE: a code does not decode under this key (wrong key or module)")
        return [int(p) for p in pos]
