"""peft LoRA with heterogeneous ranks on one base model: one adapter per distinct rank, loaded with
a client's factors before it trains and read back after. Module names are canonical (no peft prefix)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from benchmark.config import ConfigError
from benchmark.contract import LoRAFactors

_PREFIX = "base_model.model."
HEAD_NAMES = ("classifier", "score")


def is_head(name: str) -> bool:
    """Whether parameter ``name`` belongs to a classification head (trained alongside LoRA)."""
    return any(f".{h}." in f".{name}" for h in HEAD_NAMES) and "lora_" not in name


def trained_or_merged(targets: tuple[str, ...]) -> Callable[[str], bool]:
    """Parameter names a training host writes to: the LoRA-adapted modules (deltas are merged into
    their weights) and the head. Everything else can be shared with the frozen base
    (``benchmark.federation.models.shared_copy``)."""
    return lambda name: is_head(name) or any(f".{t}." in f".{name}" for t in targets)


def adapter_name(rank: int) -> str:
    return f"r{rank}"


class LoRAHost:
    """A peft model over ``model`` holding one LoRA adapter per rank in ``ranks``."""

    def __init__(self, model: nn.Module, ranks: list[int], alpha: float, targets: tuple[str, ...], dropout: float = 0.0):
        ranks = sorted(set(ranks))
        self.alpha = alpha
        self.ranks = ranks
        first = ranks[0]
        try:
            self.model = get_peft_model(
                model,
                LoraConfig(r=first, lora_alpha=alpha, target_modules=list(targets), lora_dropout=dropout),
                adapter_name=adapter_name(first),
            )
        except ValueError as exc:
            raise ConfigError(f"lora.target_modules {list(targets)} do not match the model: {exc}") from None
        for r in ranks[1:]:
            self.model.add_adapter(
                adapter_name(r), LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=dropout)
            )
        self.layers: dict[str, LoraLayer] = {
            name.removeprefix(_PREFIX): mod for name, mod in self.model.named_modules() if isinstance(mod, LoraLayer)
        }
        self.active: int | None = None

    @property
    def module_shapes(self) -> dict[str, tuple[int, int]]:
        return {n: (layer.out_features, layer.in_features) for n, layer in self.layers.items()}

    def head_parameters(self) -> dict[str, nn.Parameter]:
        """The classification head of an encoder (trained and averaged alongside LoRA), if any."""
        return {
            n.removeprefix(_PREFIX): p
            for n, p in self.model.named_parameters()
            if is_head(n)
        }

    def use(self, rank: int) -> None:
        """Activate (and make trainable) the adapter of ``rank``; everything else stays frozen."""
        self.model.base_model.set_adapter(adapter_name(rank))
        for name, p in self.model.named_parameters():
            p.requires_grad_(f".{adapter_name(rank)}." in name or name.endswith(f".{adapter_name(rank)}"))
        for p in self.head_parameters().values():
            p.requires_grad_(True)
        self.active = rank

    def lora_parameters(self, rank: int) -> list[nn.Parameter]:
        name = adapter_name(rank)
        out = []
        for layer in self.layers.values():
            out += [layer.lora_A[name].weight, layer.lora_B[name].weight]
        return out

    def set_factors(self, rank: int, factors: Mapping[str, LoRAFactors]) -> None:
        name = adapter_name(rank)
        with torch.no_grad():
            for module, layer in self.layers.items():
                f = factors[module]
                a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
                if tuple(f.A.shape) != tuple(a.shape) or tuple(f.B.shape) != tuple(b.shape):
                    raise ValueError(
                        f"{module}: factors of shape A{tuple(f.A.shape)} B{tuple(f.B.shape)} do not fit the rank-{rank} "
                        f"adapter A{tuple(a.shape)} B{tuple(b.shape)}"
                    )
                a.copy_(f.A.to(a.dtype))
                b.copy_(f.B.to(b.dtype))

    def get_factors(self, rank: int) -> dict[str, LoRAFactors]:
        name = adapter_name(rank)
        return {
            m: LoRAFactors(
                layer.lora_A[name].weight.detach().cpu().clone(),
                layer.lora_B[name].weight.detach().cpu().clone(),
                float(layer.scaling[name]),
            )
            for m, layer in self.layers.items()
        }

    def get_grads(self, rank: int) -> dict[str, LoRAFactors]:
        name = adapter_name(rank)
        out = {}
        for m, layer in self.layers.items():
            a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
            ga = a.grad if a.grad is not None else torch.zeros_like(a)
            gb = b.grad if b.grad is not None else torch.zeros_like(b)
            out[m] = LoRAFactors(ga.detach().cpu().clone(), gb.detach().cpu().clone(), float(layer.scaling[name]))
        return out

    def init_factors(self, rank: int, generator: torch.Generator) -> dict[str, LoRAFactors]:
        """A fresh LoRA as peft initializes it (Kaiming-uniform A, zero B), drawn from ``generator``."""
        out = {}
        for m, layer in self.layers.items():
            n, mm = layer.in_features, layer.out_features
            bound = 1.0 / math.sqrt(n)  # kaiming_uniform_(a=sqrt(5)) on (r, n) gives 1/sqrt(n)
            A = (torch.rand(rank, n, generator=generator) * 2 - 1) * bound
            out[m] = LoRAFactors(A, torch.zeros(mm, rank), self.alpha / rank)
        return out

    @contextlib.contextmanager
    def merged(self, deltas: Mapping[str, Tensor]) -> Iterator[nn.Module]:
        """The base model with ``deltas`` added to the adapted weights (adapters off), restored after."""
        with torch.no_grad():
            for m, d in deltas.items():
                self.layers[m].get_base_layer().weight += d.to(self.layers[m].get_base_layer().weight)
        try:
            with self.model.disable_adapter():
                yield self.model
        finally:
            with torch.no_grad():
                for m, d in deltas.items():
                    self.layers[m].get_base_layer().weight -= d.to(self.layers[m].get_base_layer().weight)

    @contextlib.contextmanager
    def input_norm_hooks(self, sums: dict[str, Tensor], mask_ref: list[Tensor | None]) -> Iterator[None]:
        """Accumulate, per adapted module, the sum over real (unmasked) tokens of x_j^2 of its input."""

        def hook(name: str):
            def fn(_module: nn.Module, args: tuple) -> None:
                x = args[0].detach()
                mask = mask_ref[0]
                if mask is not None and x.dim() == 3:
                    x = x[mask.bool()]
                sq = x.reshape(-1, x.shape[-1]).double().pow(2).sum(0).cpu()
                sums[name] = sums[name] + sq if name in sums else sq

            return fn

        handles = [layer.register_forward_pre_hook(hook(m)) for m, layer in self.layers.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
