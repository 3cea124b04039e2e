"""Contracts every registered defense and attack must keep (breaching's rule: an attack sees only
what the client shares, through the defense's own ``observe``)."""

import dataclasses
import inspect

import pytest
import torch

from attacks import ATTACKS
from benchmark.api import AttackerView, ClientInfo, ClientUpdate, FederationInfo, LoRAFactors
from defenses import DEFENSES


def _update(client: ClientInfo, shapes, seed: int) -> ClientUpdate:
    g = torch.Generator().manual_seed(seed)
    factors, grads, norms = {}, {}, {}
    for name, (m, n) in shapes.items():
        factors[name] = LoRAFactors(torch.randn(client.rank, n, generator=g), torch.randn(m, client.rank, generator=g), client.scale)
        grads[name] = LoRAFactors(torch.randn(client.rank, n, generator=g), torch.randn(m, client.rank, generator=g), client.scale)
        norms[name] = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    prev = {k: LoRAFactors(torch.zeros_like(f.A), torch.zeros_like(f.B), f.scale) for k, f in factors.items()}
    return ClientUpdate(client, 1, factors, 10 + seed, norms, grads, prev, "weights")


def _storages(obj) -> set[int]:
    out = set()
    if isinstance(obj, torch.Tensor):
        out.add(obj.untyped_storage().data_ptr())
    elif isinstance(obj, LoRAFactors):
        out |= _storages(obj.A) | _storages(obj.B)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            out |= _storages(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for v in obj.values():
            out |= _storages(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            out |= _storages(v)
    return out


@pytest.mark.parametrize("name", DEFENSES.names())
def test_observe_never_hands_over_client_tensors(name):
    cls = DEFENSES.get(name)
    defense = cls(cls.Params())
    shapes = {"model.layers.0.self_attn.q_proj": (16, 24), "model.layers.0.self_attn.v_proj": (8, 24)}
    clients = (ClientInfo(0, "low", 4, 0.25, 16.0), ClientInfo(1, "high", 8, 0.5, 16.0))
    defense.setup(FederationInfo(clients, shapes, rounds=2, clients_per_round=2, seed=0))
    updates = [_update(c, shapes, i) for i, c in enumerate(clients)]
    if hasattr(defense, "negotiate"):
        defense.negotiate(updates)
    for update in updates:
        view = defense.observe(defense.protect(update))
        assert isinstance(view, AttackerView)
        raw = _storages(update)
        assert not (_storages(view) & raw), f"{name}: the view shares memory with the client's update"
        for module, seen in view.modules.items():
            assert module in update.factors
            for factor, mask in ((seen.A, seen.A_hidden), (seen.B, seen.B_hidden)):
                if factor is not None and mask is not None:
                    assert mask.shape == factor.shape and torch.all(factor[mask] == 0), f"{name}: hidden values leak"


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attacks_take_only_the_view_and_declare_their_needs(name):
    cls = ATTACKS.get(name)
    params = list(inspect.signature(cls.reconstruct).parameters)
    assert params == ["self", "view"], f"{name}.reconstruct must take only the AttackerView"
    assert cls.requires <= {"plaintext", "model", "candidates", "grad"}
    assert getattr(cls, "target", "probe") in ("probe", "round")
    assert {"mode"} <= {f.name for f in dataclasses.fields(cls.Params)}


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attacks_answer_a_ciphertext_only_view_without_raising(name):
    cls = ATTACKS.get(name)
    for mode in ("naive", "adaptive"):
        rec = cls(dataclasses.replace(cls.Params(), mode=mode)).reconstruct(
            AttackerView(defense="full_he", kind="grad", modules={}, cipher_bytes=1000, note="ciphertext only"))
        assert rec.texts == [] and not rec.membership_scores
