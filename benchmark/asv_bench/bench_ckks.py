"""CKKS cost of packed payloads (she_lora.ckks): what every HE defense pays per client and per round.

One ciphertext (8192 values, the size of SHE-LoRA's encrypted columns at small budgets) and sixteen
(131072 values, a dense full-HE upload of a small model) bracket the two regimes: per-call overhead and
throughput.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import Bench, need, seed_all


class CKKSPacked(Bench):
    """Encrypt, decrypt, (de)serialize and server-side sum of one client's packed payload."""

    version = "2"  # 2: CPU-time timer
    params = [[8192, 131072]]
    param_names = ["n_values"]

    def setup(self, n_values: int) -> None:
        seed_all()
        self.ckks: Any = need("she_lora.ckks")
        self.ctx = self.ckks.make_secret_context()
        self.server = self.ckks.load_public_context(self.ckks.public_context_bytes(self.ctx))
        self.values = np.random.default_rng(0).standard_normal(n_values) * 0.01
        self.n_values = n_values
        self.blobs = self.ckks.encrypt_packed(self.ctx, self.values)

    def time_encrypt(self, n_values: int) -> None:
        self.ckks.encrypt_packed(self.ctx, self.values)

    def time_decrypt(self, n_values: int) -> None:
        self.ckks.decrypt_packed(self.ctx, self.blobs, n_values)

    def time_serialize(self, n_values: int) -> None:
        """Load and dump every ciphertext: the server's per-message overhead before any arithmetic."""
        for blob in self.blobs:
            self.server.dump_ct(self.server.load_ct(blob))

    def time_sum_4_clients(self, n_values: int) -> None:
        self.ckks.add_packed(self.server, [self.blobs] * 4)

    def track_cipher_bytes(self, n_values: int) -> int:
        return sum(len(b) for b in self.blobs)

    track_cipher_bytes.unit = "bytes"  # type: ignore[attr-defined]
