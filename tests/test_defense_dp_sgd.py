"""DP-SGD through opacus on a peft LoRA tiny Llama: no silent corruption, clipping, accounting."""

from __future__ import annotations

import copy

import pytest
import torch
from duo import Duo
from torch.utils.data import DataLoader

from benchmark.config import ConfigError, params_from_dict
from benchmark.contract import ClientInfo, ClientUpdate, FederationInfo, LoRAFactors
from defenses.dp_sgd import DPSGD, DPSGDParams, NonEmptyBatches, private_grads, train_local
from defenses.plain_lora import PlainLoRA

CLIENT = ClientInfo(0, "t", 4, 0.0, 8.0)
# benign: opacus' backward hook on the first LoRA layer, whose input (frozen embeddings) needs no grad
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.fixture(scope="module")
def lora_model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=1000,
    )
    base = LlamaForCausalLM(cfg).eval()  # as loaded: eval mode, frozen
    for p in base.parameters():
        p.requires_grad_(False)
    # B = 0 at a fresh peft init makes dL/dA zero; non-zero B exercises both factors
    return get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))


def _loader(n=16, batch=4, seq=10, seed=1):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 1000, (seq,), generator=gen)
        rows.append({"input_ids": ids, "attention_mask": torch.ones(seq, dtype=torch.long), "labels": ids.clone()})
    return DataLoader(rows, batch_size=batch, collate_fn=lambda b: {k: torch.stack([r[k] for r in b]) for k in b[0]})


def _loss(model, batch):
    return model(**batch).loss


def _lora(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _opt(model, kind="sgd"):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=0.5) if kind == "sgd" else torch.optim.AdamW(params, lr=1e-2)


def _defense(**kw):
    """Both roles set up over a channel; training goes through ``.client`` (the role the engine wraps)."""
    return Duo(DPSGD.over(PlainLoRA(), DPSGDParams(**kw)), FederationInfo((CLIENT,), {}, 2, 1, 0))


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_no_noise_and_huge_clip_equal_plain_training(lora_model, opt):
    start = _lora(lora_model)
    plain = copy.deepcopy(lora_model)
    plain.train()
    o = _opt(plain, opt)
    for i, batch in enumerate(_loader()):
        if i == 3:
            break
        o.zero_grad()
        _loss(plain, batch).backward()
        o.step()
    private = copy.deepcopy(lora_model)
    d = _defense(noise_multiplier=0.0, max_grad_norm=1e6, poisson_sampling=False)
    train_local(d.client, private, _opt(private, opt), _loader(), CLIENT, 3, _loss)
    ref, got = _lora(plain), _lora(private)
    assert max(float((ref[k] - start[k]).abs().max()) for k in ref) > 1e-3  # training moved LoRA
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-4)
    assert all(k == n for k, n in zip(sorted(ref), sorted(got)))


def test_clipping_bounds_each_step_and_noise_perturbs(lora_model):
    start = _lora(lora_model)
    model = copy.deepcopy(lora_model)
    d = _defense(noise_multiplier=0.0, max_grad_norm=1e-3, poisson_sampling=False)
    train_local(d.client, model, _opt(model), _loader(), CLIENT, 2, _loss)
    moved = torch.sqrt(sum(((v - start[k]) ** 2).sum() for k, v in _lora(model).items()))
    assert float(moved) <= 2 * 0.5 * 1e-3 * (1 + 1e-4)  # steps * lr * C
    noisy = copy.deepcopy(lora_model)
    d = _defense(noise_multiplier=1.0, max_grad_norm=1e-3, poisson_sampling=False)
    train_local(d.client, noisy, _opt(noisy), _loader(), CLIENT, 2, _loss)
    assert not torch.allclose(_lora(noisy)[sorted(start)[0]], _lora(model)[sorted(start)[0]])


def test_epsilon_tracks_steps_per_client(lora_model):
    from opacus.accountants import RDPAccountant

    other = ClientInfo(1, "t", 4, 0.0, 8.0)
    d = Duo(DPSGD.over(PlainLoRA(), DPSGDParams(noise_multiplier=1.0, max_grad_norm=1.0)), FederationInfo((CLIENT, other), {}, 2, 2, 0))
    assert d.privacy_params()["epsilon"] == 0.0
    for client, steps in ((CLIENT, 3), (other, 1), (CLIENT, 2)):
        model = copy.deepcopy(lora_model)
        train_local(d.client, model, _opt(model), _loader(), client, steps, _loss)
    acc = RDPAccountant()
    acc.history = [(1.0, 0.25, 5)]  # q = batch 4 / 16 examples, 5 steps for client 0
    assert d.client.steps() == {0: 5, 1: 1}
    pp = d.privacy_params()
    assert pp["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    assert pp["epsilon_mean"] < pp["epsilon"]
    assert (pp["sigma"], pp["clip"], pp["delta"], pp["accountant"]) == (1.0, 1.0, 1e-5, "rdp")


def test_poisson_batches_depend_on_the_seed_not_on_the_global_rng(lora_model):
    """opacus samples Poisson batches from torch's global RNG unless told otherwise: a client's training
    then depended on what ran before it in the process (in process vs on a Flower node)."""
    def trained(global_seed):
        torch.manual_seed(global_seed)
        model = copy.deepcopy(lora_model)
        train_local(_defense(noise_multiplier=0.5, max_grad_norm=1.0).client, model, _opt(model), _loader(), CLIENT, 3,
                    _loss)
        return _lora(model)

    first, again = trained(1), trained(2)
    for k in first:
        torch.testing.assert_close(first[k], again[k], atol=0, rtol=0)


def test_release_detaches_opacus_from_the_model(lora_model):
    model = copy.deepcopy(lora_model)
    d = _defense(noise_multiplier=0.5)
    model, opt, loader = d.client.wrap_training(model, _opt(model), _loader(), CLIENT)
    opt.zero_grad()
    _loss(model, next(iter(loader))).backward()
    assert private_grads(opt)
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)
    d.client.release()
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_upload_and_aggregation_are_flexlora():
    gen = torch.Generator().manual_seed(0)
    fed = FederationInfo((CLIENT, ClientInfo(1, "t", 2, 0.0, 8.0)), {"m": (8, 6)}, 1, 2, 0)
    updates = [
        ClientUpdate(c, 1, {"m": LoRAFactors(torch.randn(c.rank, 6, generator=gen), torch.randn(8, c.rank, generator=gen), c.scale)}, 3, {})
        for c in fed.clients
    ]
    d, p = Duo(DPSGD.over(PlainLoRA()), fed), Duo(PlainLoRA(), fed)
    got = d.aggregate([d.protect(u) for u in updates])
    ref = p.aggregate([p.protect(u) for u in updates])
    assert all(torch.equal(got.plain[k], ref.plain[k]) for k in ref.plain)
    assert d.observe(d.protect(updates[0])).defense == "dp_sgd+plain_lora"


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"noise_multiplier": -0.5}, "dp_sgd.noise_multiplier must be >= 0"),
        ({"delta": 1.5}, "dp_sgd.delta must be in (0, 1), got 1.5"),
        ({"max_grad_norm": 0.0}, "dp_sgd.max_grad_norm must be > 0"),
        ({"grad_sample_mode": "ghost"}, "dp_sgd.grad_sample_mode must be one of hooks, functorch"),
    ],
)
def test_bad_parameters_are_one_line_errors(params, needle):
    with pytest.raises(ConfigError) as info:
        params_from_dict(DPSGDParams, params, "dp_sgd")
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def _batches(n_batches=3, batch=4):
    return [next(iter(_loader(n=batch, batch=batch, seed=10 + i))) for i in range(n_batches)]


def test_list_of_batches_loader_as_the_harness_passes_it(lora_model):
    plain = copy.deepcopy(lora_model)
    plain.train()
    o = _opt(plain)
    for batch in _batches():
        o.zero_grad()
        _loss(plain, batch).backward()
        o.step()
    private = copy.deepcopy(lora_model)
    d = _defense(noise_multiplier=0.0, max_grad_norm=1e6, poisson_sampling=False)
    train_local(d.client, private, _opt(private), _batches(), CLIENT, 3, _loss)
    ref, got = _lora(plain), _lora(private)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-4)
    poisson = _defense(noise_multiplier=1.0)
    model = copy.deepcopy(lora_model)
    _, _, loader = poisson.client.wrap_training(model, _opt(model), _batches(), CLIENT)
    assert len(loader) == 3
    poisson.client.release()
    assert poisson.client._engines[0].accountant.history == []  # nothing spent before a step


def test_empty_poisson_batches_become_a_dummy_row():
    rows = _loader(n=4, batch=2)
    empty = {k: v[:0] for k, v in next(iter(rows)).items()}
    batches = list(NonEmptyBatches([empty, next(iter(rows)), []], rows))
    assert [int(b["input_ids"].shape[0]) for b in batches] == [1, 2, 1]
    assert int(batches[0]["input_ids"].abs().sum()) == 0
    assert bool(batches[0]["attention_mask"].all())
