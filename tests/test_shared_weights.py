"""Memory and speed changes that must not change results: model copies that share the frozen base
weights, and a decoder loss computed on the labelled positions only."""

import torch

from benchmark.config import ModelConfig
from benchmark.federation.data import Example
from benchmark.federation.lora import trained_or_merged
from benchmark.federation.models import load_model, shared_copy
from benchmark.federation.train import TaskSpec, compute_loss, encode, evaluate


def _tiny():
    return load_model(ModelConfig(name="tiny_llama"), "classification", 2)


def _examples(n: int) -> list[Example]:
    words = ["red apple pie", "a long and winding road to nowhere at all", "blue", "green tea with lemon"]
    return [Example(text=words[i % len(words)] + f" {i}", label=i % 2) for i in range(n)]


def test_shared_copy_shares_frozen_weights_and_copies_the_rest():
    base = _tiny().model
    clone = shared_copy(base, trained_or_merged(("q_proj", "v_proj")))
    src, dst = dict(base.named_parameters()), dict(clone.named_parameters())
    assert src.keys() == dst.keys()
    for name, p in src.items():
        private = ".q_proj." in name or ".v_proj." in name
        assert (dst[name] is p) != private, name
        assert torch.equal(dst[name], p)
    with torch.no_grad():
        clone.model.layers[0].self_attn.q_proj.weight += 1.0
    assert not torch.equal(clone.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight)


def test_loss_on_labelled_positions_equals_the_models_loss():
    loaded = _tiny()
    spec = TaskSpec("classification", "decoder", "{text} ->", ("no", "yes"), 16)
    batch = encode(loaded.tokenizer, spec, _examples(6))
    assert len({int(r.nonzero().max()) for r in (batch["labels"] != -100)}) > 1  # rows end at different places
    model = loaded.model
    full = model(**batch).loss
    assert torch.allclose(compute_loss(model, batch), full, rtol=1e-6, atol=1e-7)


def test_evaluate_matches_full_logits():
    loaded = _tiny()
    spec = TaskSpec("classification", "decoder", "{text} ->", ("no", "yes"), 16)
    examples = _examples(10)
    got = evaluate(loaded.model, loaded.tokenizer, spec, examples, batch_size=4)
    batch = encode(loaded.tokenizer, spec, examples)
    with torch.no_grad():
        out = loaded.model(**batch)
    ids = [loaded.tokenizer(" no", add_special_tokens=False).input_ids[0], loaded.tokenizer(" yes", add_special_tokens=False).input_ids[0]]
    mask = batch["labels"][:, 1:] != -100
    picked = out.logits[:, :-1][mask][:, ids].argmax(-1)
    acc = int((picked == torch.tensor([ex.label for ex in examples])).sum()) / len(examples)
    assert abs(got["utility"] - acc) < 1e-9
    assert abs(got["eval_loss"] - float(out.loss)) < 1e-5
