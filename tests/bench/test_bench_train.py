"""A local training step's loss and backward, with the LM head over every position (the model's own
loss) against the labelled positions only (``benchmark.federation.train.compute_loss``), on the tiny Llama with
a default-scenario-shaped batch (8 rows, up to 40 tokens). Runs once as a test by default; time it
with ``--benchmark-enable``."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from benchmark.config import ModelConfig
from benchmark.federation.data import Example
from benchmark.federation.models import load_model
from benchmark.federation.train import TaskSpec, compute_loss, encode


@pytest.mark.benchmark(group="train-step")
@pytest.mark.parametrize("head", ["all_positions", "labelled_only"])
def test_train_step(benchmark: Any, head: str) -> None:
    loaded = load_model(ModelConfig(name="tiny_llama"), "classification", 2)
    spec = TaskSpec("classification", "decoder", "Tweet: {text}\nSentiment:", ("negative", "positive"), 40)
    words = "the new phone is great but the battery dies before lunch every single day".split()
    examples = [Example(" ".join(words[: 4 + 3 * i]), i % 2) for i in range(8)]
    batch = encode(loaded.tokenizer, spec, examples)
    model = loaded.model
    emb = model.get_input_embeddings().weight
    emb.requires_grad_(True)  # something to backpropagate into, like a LoRA factor at layer 0

    def step() -> float:
        emb.grad = None
        loss = model(**batch).loss if head == "all_positions" else compute_loss(model, batch)
        loss.backward()
        return float(loss.detach())

    try:
        value = benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    finally:
        emb.requires_grad_(False)
        emb.grad = None
    with torch.no_grad():
        assert abs(value - float(model(**batch).loss)) < 1e-5
