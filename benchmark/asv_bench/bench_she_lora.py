"""SHE-LoRA through its defense class (defenses.she_lora.SHELoRADefense), one step at a time.

Key setup, negotiation (the server merges the clients' top-k column lists), a client's protection
(sensitivity, swapping, encryption of its columns), secure aggregation in both lift modes, and a
client's reparameterization of the broadcast back to its own rank. Parametrized over what changes the
cost: lift mode, clients in the round, encryption budget. Clients alternate rank 8 with half the budget
and rank 16 with the full budget (heterogeneous tiers, as in the paper).
"""

from __future__ import annotations

from typing import Any

from .common import SHAPES, Bench, Steps, federation, make_defense, memo, random_updates, seed_all

LIFTS = ["server_lift", "client_lift"]
CLIENTS = [2, 4]
BUDGETS = [0.02, 0.1]


def _federation(n_clients: int, budget: float) -> tuple[Any, list[Any]]:
    ranks = [8 if i % 2 == 0 else 16 for i in range(n_clients)]
    fed = federation(ranks, [budget / 2 if r == 8 else budget for r in ranks], SHAPES)
    return fed, random_updates(fed)


class SHELoRASetup(Bench):
    """Key generation and planning: server_lift adds the Galois keys its rotations need."""

    version = "2"  # 2: CPU-time timer
    params = [LIFTS]
    param_names = ["lift"]

    def setup(self, lift: str) -> None:
        seed_all()
        self.steps = Steps(make_defense("she_lora", {"lift": lift}))
        self.fed = memo(("fed", 4, 0.1), lambda: _federation(4, 0.1))[0]

    def time_setup(self, lift: str) -> None:
        self.steps.setup(self.fed)


class SHELoRANegotiate(Bench):
    """A fresh negotiation (clients' top-k lists, server merge) on a set-up client_lift defense; the lift
    mode does not enter the negotiation."""

    version = "2"  # 2: CPU-time timer
    params = [CLIENTS, BUDGETS]
    param_names = ["n_clients", "budget"]

    def setup(self, n_clients: int, budget: float) -> None:
        seed_all()
        self.fed, self.updates = memo(("fed", n_clients, budget), lambda: _federation(n_clients, budget))
        defense: Any = make_defense("she_lora", {"lift": "client_lift"})
        if not (hasattr(defense, "negotiate") or hasattr(defense, "server")):
            raise NotImplementedError("she_lora has no negotiate step at this commit")
        self.steps = Steps(defense)
        self.steps.setup(self.fed)

    def time_negotiate(self, n_clients: int, budget: float) -> None:
        self.steps.negotiate(self.updates)


def _round(lift: str, n_clients: int, budget: float) -> dict[str, Any]:
    fed, updates = _federation(n_clients, budget)
    steps = Steps(make_defense("she_lora", {"lift": lift}))
    steps.setup(fed)
    steps.negotiate(updates)
    payloads = [steps.protect(u) for u in updates]
    return {"fed": fed, "updates": updates, "steps": steps, "payloads": payloads, "message": steps.aggregate(payloads)}


class SHELoRARound(Bench):
    """protect, aggregate and finalize of one round; the set-up defense and its messages are built once
    per benchmark process (these steps do not consume them)."""

    version = "2"  # 2: CPU-time timer
    params = [LIFTS, CLIENTS, BUDGETS]
    param_names = ["lift", "n_clients", "budget"]

    def setup(self, lift: str, n_clients: int, budget: float) -> None:
        seed_all()
        make_defense("she_lora", {"lift": lift})  # skip early when missing
        self.r: dict[str, Any] = memo(("round", lift, n_clients, budget), lambda: _round(lift, n_clients, budget))

    def time_protect(self, lift: str, n_clients: int, budget: float) -> None:
        """One rank-16 client's upload: column selection, swapping and CKKS encryption."""
        self.r["steps"].protect(self.r["updates"][-1])

    def time_aggregate(self, lift: str, n_clients: int, budget: float) -> None:
        self.r["steps"].aggregate(self.r["payloads"])

    def time_finalize(self, lift: str, n_clients: int, budget: float) -> None:
        """Decrypt and reparameterize the broadcast to the rank-16 client's own rank."""
        self.r["steps"].finalize(self.r["message"], self.r["fed"].clients[-1])
