"""What the ``flower`` engine pays per message besides Flower's own transport: turning a WirePayload
into records, and counting a message's bytes (``benchmark.engines.records``).

A SHE-LoRA broadcast of the default scenario is about 76 MB (ciphertexts and plaintext columns) and goes
to every participant of a round; counting it is done once per message. Before issue 28 each count made
Flower recompute every parent's object id over its whole subtree (5.8 s for one 80 MB message, against
0.9 s now); this keeps that figure in the history.
"""

from __future__ import annotations

import os
from typing import Any

from .common import Bench, need, seed_all


class FlowerBroadcast(Bench):
    """One broadcast to three receivers: its records built once, and the three messages' sizes."""

    params = [[8, 64]]
    param_names = ["megabytes"]

    def setup(self, megabytes: int) -> None:
        seed_all()
        torch = need("torch")
        self.records: Any = need("benchmark.engines.records")
        flwr_app, identity = need("flwr.app"), need("flwr.supercore.task_identity")
        identity.TaskIdentity.run_id = identity.TaskIdentity.node_id = identity.TaskIdentity.task_id = 1
        contract = need("benchmark.contract")
        n = megabytes * 2**20 // 2  # half plaintext tensors, half ciphertext bytes
        plain = {f"m{i}/A": torch.randn(16, n // (16 * 4 * 16)) for i in range(16)}
        cipher = {f"m{i}/c": [os.urandom(n // 32)] * 2 for i in range(16)}
        self.payload = contract.WirePayload("server", plain=plain, cipher=cipher, meta={"kind": "broadcast"})
        shared = self.records.payload_records(self.payload)
        self.messages = [flwr_app.Message(self.records.content(self.payload, {"client": i}, shared), dst_node_id=i,
                                          message_type="query.finalize") for i in range(3)]

    def time_payload_records(self, megabytes: int) -> None:
        self.records.payload_records(self.payload)

    def time_count_three_receivers(self, megabytes: int) -> None:
        self.records.message_sizes(self.messages)
