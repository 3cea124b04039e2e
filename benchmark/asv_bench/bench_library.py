"""The three speed targets of issue 13, through the she_lora library on random factors (``rounds``).

- ``FlexLoRA50.time_aggregate``: 50 clients of ranks 8..32 into one 3200 x 3200 module (stacked rank
  ~1000), the full factorization and the one kept at the largest client rank (what servers broadcast);
- ``LiftRound.time_server_aggregate``: the server's aggregation of a server_lift round on the
  cost_public_bench shapes (104 LoRA pairs, A 4 x 3200, four clients, budget 0.125 %);
- ``LiftRound.time_round``: protect x 4, aggregate and one client's finalize of a client_lift round
  on the same shapes.

Each call takes seconds, so these run one sample per repeat; the set-up round (keys, negotiation,
uploads) is built once per benchmark process (``memo``).
"""

from __future__ import annotations

import inspect
from typing import Any

from .common import Bench, memo, need, seed_all
from .rounds import COST_PUBLIC_BENCH, FLEXLORA_50, build_round, flexlora_terms


class _Heavy(Bench):
    number = 1
    rounds = 1
    repeat = (1, 3, 20.0)
    warmup_time = 0.0
    timeout = 600


class FlexLoRA50(_Heavy):
    """Stacked-QR FlexLoRA at the scale of a 50-client federation on a 3B model's module."""

    version = "1"
    params = [["full", "rank32"]]
    param_names = ["output"]

    def setup(self, output: str) -> None:
        seed_all()
        self.lowrank: Any = need("she_lora.lowrank")
        if output == "rank32" and "rank" not in inspect.signature(self.lowrank.aggregate_lowrank).parameters:
            raise NotImplementedError("aggregate_lowrank has no rank argument at this commit")
        self.terms = memo("flexlora50", lambda: flexlora_terms(**FLEXLORA_50))
        self.rank = 32 if output == "rank32" else None

    def time_aggregate(self, output: str) -> None:
        if self.rank is None:
            self.lowrank.aggregate_lowrank(self.terms)
        else:
            self.lowrank.aggregate_lowrank(self.terms, rank=self.rank)


class LiftRound(_Heavy):
    """A 4-client round on the cost_public_bench shapes, per lift mode."""

    version = "1"
    params = [["server_lift", "client_lift"]]
    param_names = ["lift"]

    def setup(self, lift: str) -> None:
        seed_all()
        need("she_lora.client")
        self.r: Any = memo(("round", lift), lambda: build_round(lift, COST_PUBLIC_BENCH))
        self.uploads = memo(("uploads", lift), lambda: self.r.protect_all())
        self.rank = max(m.rank for m in self.r.plan.members.values())

    def time_server_aggregate(self, lift: str) -> None:
        """The server's aggregation alone (plaintext part, then sums or lifts of the ciphertexts)."""
        self.r.aggregate(self.uploads)

    def time_round(self, lift: str) -> None:
        """Every client's protect, the aggregation, one client's decryption and fusion at its rank."""
        self.r.finalize(self.r.aggregate(self.r.protect_all()), rank=self.rank)

    def track_upload_bytes(self, lift: str) -> int:
        return self.r.bytes_up(self.uploads)

    track_upload_bytes.unit = "bytes"  # type: ignore[attr-defined]


class LiftRoundTwoWorkers(LiftRound):
    """The same round with two forked workers per party where the library has them (client encryption,
    the server lift; sums and decryption stay in one process): what a 2-core server or client can do. A class of its own so that ``LiftRound``'s history stays whole."""

    def setup(self, lift: str) -> None:
        seed_all()
        need("she_lora.client")
        self.r = memo(("round2", lift), lambda: build_round(lift, COST_PUBLIC_BENCH, n_workers=2))
        self.uploads = memo(("uploads2", lift), lambda: self.r.protect_all())
        self.rank = max(m.rank for m in self.r.plan.members.values())
