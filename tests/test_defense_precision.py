"""Secure aggregation keeps its relative precision however small the updates are (each encrypted
vector is scaled by a power of two into [-1, 1] before encoding), for every HE defense and mode."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from duo import Duo
from test_she_lora_helpers import federation, random_update, reference

from benchmark.contract import LoRAFactors
from defenses.full_he import FullHE, FullHEParams
from defenses.maskcrypt import MaskCrypt, MaskCryptParams
from defenses.she_lora import SHELoRADefense, SHELoRAParams
from she_lora.lowrank import relative_error, to_lora

SHAPES = {"l0.q": (32, 48), "l1.v": (24, 48)}
RANKS, BUDGETS = (4, 8, 8), (0.1, 0.2, 0.25)
DEFENSES = {
    "she_lora_client_lift": lambda: SHELoRADefense(SHELoRAParams(lift="client_lift")),
    "she_lora_server_lift": lambda: SHELoRADefense(SHELoRAParams(lift="server_lift")),
    "full_he_stack": lambda: FullHE(FullHEParams(aggregation="stack")),
    "full_he_lift": lambda: FullHE(FullHEParams(aggregation="lift")),
    "maskcrypt": lambda: MaskCrypt(MaskCryptParams(budget=0.3)),
}


def scaled(update, factor: float):
    """The update with B scaled so the aggregate's entries shrink by ``factor``."""
    factors = {n: LoRAFactors(f.A.double(), f.B.double() * factor, f.scale) for n, f in update.factors.items()}
    return dataclasses.replace(update, factors=factors)


@pytest.mark.parametrize("magnitude", [1e-3, 1e-5, 1e-7, 1e-9])
@pytest.mark.parametrize("name", list(DEFENSES))
def test_relative_error_does_not_grow_as_updates_shrink(name, magnitude):
    torch.set_num_threads(1)
    fed = federation(SHAPES, RANKS, BUDGETS)
    raw = [random_update(c, SHAPES) for c in fed.clients]
    peak = max(float(ref.dense().abs().max()) for ref in reference(raw).values())
    updates = [scaled(u, magnitude / peak) for u in raw]
    d = Duo(DEFENSES[name](), fed)
    d.negotiate(updates)
    message = d.aggregate([d.protect(u) for u in updates])
    ref = reference(updates)
    worst = 0.0
    for client in fed.clients:
        mine = d.finalize(message, client)
        for n, f in mine.items():
            A, B = to_lora(ref[n], client.rank, client.scale)
            worst = max(worst, relative_error(f.delta().double(), client.scale * (B @ A).double()))
    assert worst <= 1e-5, f"{name} at {magnitude:g}: relative error {worst:.2e}"
