"""The protocol's public, static facts: configuration, per-client column budgets, packing layouts.

Everything here is known to every party at setup (module shapes, each client's rank and budget), so
clients and server derive the same layouts without sending them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from she_lora.ckks import CKKSParams
from she_lora.layout import Band, client_lift_order, server_lift_bands
from she_lora.negotiation import DEFAULT_SHARES
from she_lora.negotiation_gp import NEGOTIATIONS
from she_lora.sensitivity import budget_columns

LIFTS = ("client_lift", "server_lift")
LEAKAGES = ("plain", "ope")


@dataclass(frozen=True)
class ProtocolConfig:
    """How SHE-LoRA runs; see ``defenses.she_lora.SHELoRAParams`` for the meaning of each field."""

    lift: str = "client_lift"
    leakage: str = "ope"
    swap: bool = True
    send_scores: bool = False
    shares: tuple[float, float, float] = DEFAULT_SHARES
    ckks: CKKSParams = field(default_factory=lambda: CKKSParams(coeff_mod_bit_sizes=(60, 60), scale_bits=50))
    n_workers: int = 1
    negotiation: str = "fixed"
    gp_calls: int = 20

    def __post_init__(self) -> None:
        if self.lift not in LIFTS:
            raise ValueError(f"she_lora.lift must be one of {', '.join(LIFTS)}, got {self.lift!r}")
        if self.leakage not in LEAKAGES:
            raise ValueError(f"she_lora.leakage must be one of {', '.join(LEAKAGES)}, got {self.leakage!r}")
        if self.leakage == "ope" and not self.swap:
            raise ValueError("she_lora.leakage='ope' needs swap=true: unswapped, the upload layout reveals the encrypted indices")
        if self.lift == "server_lift" and (self.ckks.levels < 2 or not self.ckks.galois_keys):
            raise ValueError("she_lora.lift='server_lift' needs a CKKS chain with two levels and Galois keys")
        if self.negotiation not in NEGOTIATIONS:
            raise ValueError(f"she_lora.negotiation must be one of {', '.join(NEGOTIATIONS)}, got {self.negotiation!r}")
        if not 2 <= self.gp_calls <= 200:
            raise ValueError(f"she_lora.gp_calls must be in [2, 200], got {self.gp_calls}")
        if self.n_workers < 1:
            raise ValueError(f"she_lora.n_workers must be >= 1, got {self.n_workers}")


@dataclass(frozen=True)
class Member:
    """A client as the protocol sees it: rank and (effective) encryption budget."""

    client_id: int
    rank: int
    budget: float


class Plan:
    """Per-client k per module and the packing layout of the chosen lift mode (``order``/``offsets``
    for client lift, ``bands`` for server lift)."""

    def __init__(self, shapes: Mapping[str, tuple[int, int]], members: Sequence[Member], lift: str, slots: int) -> None:
        for name, (m, n) in shapes.items():
            if m < 1 or n < 1:
                raise ValueError(f"module {name!r}: shape must be positive, got {(m, n)}")
        for mem in members:
            if mem.rank < 1:
                raise ValueError(f"client {mem.client_id}: LoRA rank must be >= 1, got {mem.rank}")
            if not 0.0 <= mem.budget <= 1.0:
                raise ValueError(f"client {mem.client_id}: encryption budget must be in [0, 1], got {mem.budget}")
        self.shapes = {k: (int(v[0]), int(v[1])) for k, v in shapes.items()}
        self.members = {mem.client_id: mem for mem in members}
        self.lift, self.slots = lift, slots
        self.k = {mem.client_id: {name: budget_columns(mem.budget, n) for name, (_, n) in self.shapes.items()} for mem in members}
        self.k_max = {name: max((ks[name] for ks in self.k.values()), default=0) for name in self.shapes}
        self.bands: tuple[Band, ...] = ()
        self.order: list[tuple[str, int]] = []
        self.offsets: list[int] = [0]
        if lift == "server_lift":
            self.bands = server_lift_bands(self.shapes, [(mem.rank, self.k[mem.client_id]) for mem in members], slots)
        else:
            self.order = client_lift_order(self.shapes, self.k_max)
            for name, _ in self.order:
                self.offsets.append(self.offsets[-1] + self.shapes[name][0])

    def member(self, client_id: int) -> Member:
        if client_id not in self.members:
            raise ValueError(f"client {client_id} is not part of this federation")
        return self.members[client_id]

    def lift_entries(self, ks: Mapping[str, int]) -> int:
        """How many client-lift entries (module, j) a client with budgets ``ks`` fills (a prefix)."""
        last = -1
        for i, (name, j) in enumerate(self.order):
            if j < ks.get(name, 0):
                last = i
        return last + 1
