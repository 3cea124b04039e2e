"""Sample-level DP-SGD (DP-LoRA) through opacus on the client's trainable LoRA parameters, as a
wrapper over any defense whose client role leaves local training alone (``dp_sgd`` alone is
``dp_sgd+plain_lora``).

Unlike ``dp`` this wrapper changes local training itself, so it acts through the harness's optional
``wrap_training`` hook: opacus attaches per-sample-gradient hooks to the model (the caller keeps using
its own model object), swaps the optimizer for a ``DPOptimizer`` (per-sample clipping to
``max_grad_norm``, Gaussian noise ``noise_multiplier * max_grad_norm``) and, with Poisson sampling,
the loader for a ``DPDataLoader``. Only trainable parameters get per-sample gradients, so the frozen
base model (embeddings, RMSNorm, attention) needs no opacus support. Upload and aggregation are
the inner defense's: the privacy comes from training.

Caveat kept visible: opacus assumes the loss is a mean over samples; a causal-LM loss averaged over
all tokens of a batch weights samples by their token counts. Classification (one label token per
example) matches the assumption exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from benchmark.contract import (
    ClientInfo,
    ClientRole,
    ClientUpdate,
    Defense,
    WirePayload,
    Wrapper,
    WrapperClient,
    WrapperServer,
)
from defenses.dp import DP_COLUMNS, check_accountant, check_delta, stream

GRAD_SAMPLE_MODES = ("hooks", "functorch")
# opacus' backward hooks on the first LoRA layer see inputs that need no gradient (frozen embeddings);
# torch then warns on every step although the per-sample gradients of the LoRA weights are right
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")


@dataclass(frozen=True)
class DPSGDParams:
    """Per-sample clipping, noise and accounting of DP-SGD."""

    noise_multiplier: float = field(default=1.0, metadata={
        "help": "sigma: noise std is noise_multiplier * max_grad_norm per step; >= 0"})
    max_grad_norm: float = field(default=1.0, metadata={
        "help": "C: per-sample gradient L2 bound over all trainable parameters; > 0"})
    delta: float = field(default=1e-5, metadata={"help": "the delta of (epsilon, delta)-DP; in (0, 1)"})
    accountant: str = field(default="rdp", metadata={"help": "opacus privacy accountant: rdp | prv"})
    poisson_sampling: bool = field(default=True, metadata={
        "help": "opacus' DPDataLoader (what the accountant assumes); false keeps the harness's batches"})
    grad_sample_mode: str = field(default="hooks", metadata={
        "help": "opacus per-sample gradient engine: hooks | functorch"})

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"dp_sgd.noise_multiplier must be >= 0 and finite, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"dp_sgd.max_grad_norm must be > 0, got {self.max_grad_norm}")
        check_delta("dp_sgd.delta", self.delta)
        check_accountant("dp_sgd.accountant", self.accountant)
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(
                f"dp_sgd.grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}, got {self.grad_sample_mode!r}"
            )


class DPSGDClient(WrapperClient):
    """DP-SGD on the LoRA parameters (opacus); the inner defense protects the resulting factors.

    The engine calls ``wrap_training(model, optimizer, loader, client)`` before local training and
    trains with what it returns; ``release`` (or ``protect``) then detaches opacus from the model.
    One opacus ``PrivacyEngine`` per client tracks that client's steps; ``privacy_params`` reports the
    largest epsilon over clients (the guarantee every client gets): only clients know it.
    """

    def __init__(self, params: DPSGDParams, inner: ClientRole) -> None:
        super().__init__(params, inner)
        self._engines: dict[int, Any] = {}
        self._wraps: dict[int, int] = {}
        self._hooks: Any = None

    def wrap_training(self, model: nn.Module, optimizer: Any, loader: Any, client: ClientInfo) -> tuple[nn.Module, Any, Any]:
        """Make local training DP-SGD: returns (the same model, a DPOptimizer, a loader).

        ``loader`` is a torch ``DataLoader`` over a sized dataset, or any iterable of equally sized
        dict batches (the harness's pre-encoded list), which is split into rows and re-batched. With
        Poisson sampling the sample rate is batch size / rows the loader holds: a round's rows are
        drawn from the client's data independently of their content, so accounting every round with
        that rate is an upper bound (no credit for the draw). An empty Poisson batch is replaced by
        one all-zero dummy row (data-independent, so the guarantee stands), which models accept.
        """
        from opacus import PrivacyEngine

        self.release()
        p = self.params
        model.train()  # opacus skips activations of modules in eval mode (from_pretrained returns eval)
        calls = self._wraps.get(client.client_id, 0)
        self._wraps[client.client_id] = calls + 1
        seed = self.fed.seed if self.fed else 0
        data_loader = as_data_loader(loader)
        # opacus draws the noise on the parameters' device, so the generator must live there too
        device = next((q.device for q in model.parameters() if q.requires_grad), torch.device("cpu"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # opacus' secure-RNG notice
            engine = self._engines.get(client.client_id)
            if engine is None:
                engine = self._engines[client.client_id] = PrivacyEngine(accountant=p.accountant)
            # each round brings a new loader; opacus' same-dataset check compares datasets with `!=`,
            # which fails on lists of dict rows, and the accountant does not depend on it
            engine.dataset = None
            hooks, dp_optimizer, dp_loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=data_loader,
                noise_multiplier=p.noise_multiplier,
                max_grad_norm=p.max_grad_norm,
                poisson_sampling=p.poisson_sampling,
                noise_generator=stream(seed, "dp_sgd", client.client_id, calls, device=device),
                grad_sample_mode=p.grad_sample_mode,
                wrap_model=False,
            )
        self._hooks = hooks
        if p.poisson_sampling:
            # opacus samples batches from torch's global RNG unless in secure mode: a result would then
            # depend on whatever ran before in the process (an in-process run differs from a Flower node)
            dp_loader.batch_sampler.generator = stream(seed, "dp_sgd-sampling", client.client_id, calls)
            dp_loader = NonEmptyBatches(dp_loader, data_loader)
        return model, dp_optimizer, dp_loader

    def release(self) -> None:
        """Remove opacus' hooks and per-sample attributes from the last wrapped model."""
        if self._hooks is not None:
            self._hooks.cleanup()
            self._hooks = None
        self.inner.release()

    def protect(self, update: ClientUpdate) -> WirePayload:
        self.release()  # local training is over once the client uploads
        return super().protect(update)

    def epsilons(self) -> dict[int, float]:
        """Per-client epsilon spent so far, from each client's opacus accountant."""
        out = {}
        for cid, engine in self._engines.items():
            if not engine.accountant.history:
                out[cid] = 0.0
            elif self.params.noise_multiplier == 0:
                out[cid] = math.inf
            else:
                out[cid] = float(engine.get_epsilon(self.params.delta))
        return out

    def steps(self) -> dict[int, int]:
        return {cid: sum(h[2] for h in e.accountant.history) for cid, e in self._engines.items()}

    def privacy_params(self) -> dict[str, Any]:
        p = self.params
        eps = self.epsilons()
        steps = self.steps()
        return {
            **self.inner.privacy_params(),
            "epsilon": max(eps.values()) if eps else 0.0,
            "epsilon_mean": sum(eps.values()) / len(eps) if eps else 0.0,
            "sigma": p.noise_multiplier,
            "clip": p.max_grad_norm,
            "delta": p.delta,
            "accountant": p.accountant,
            "steps_max": max(steps.values()) if steps else 0,
            "level": "sample",
        }


class DPSGDServer(WrapperServer):
    """The inner server role, unchanged: the privacy comes from the clients' training."""

    name: ClassVar[str] = "dp_sgd"


class DPSGD(Wrapper):
    """DP-SGD on the LoRA parameters (opacus) under any defense that leaves training alone; ``dp_sgd``
    alone is ``dp_sgd+plain_lora`` (FlexLoRA aggregation of the DP-trained factors)."""

    name: ClassVar[str] = "dp_sgd"
    version: ClassVar[str] = "3"
    Params = DPSGDParams
    Client = DPSGDClient
    Server = DPSGDServer
    family: ClassVar[str] = "dp"
    columns: ClassVar[Mapping[str, str]] = DP_COLUMNS

    @classmethod
    def cannot_wrap(cls, inner: Defense) -> str | None:
        role = inner.client
        while True:  # through every wrapper layer down to the defense
            if type(role).wrap_training not in (ClientRole.wrap_training, WrapperClient.wrap_training):
                return "its client role already changes local training (wrap_training); opacus would wrap it twice"
            if not isinstance(role, WrapperClient):
                return None
            role = role.inner

    @classmethod
    def paper_method(cls, inner: str | None) -> str | None:
        return f"{inner}-DP-SGD" if inner else None


def pad_collate(rows: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Stack dict rows, right-padding sequences to the longest (labels with -100, the rest with 0)."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if values[0].dim() == 0:
            out[key] = torch.stack(values)
            continue
        width = max(v.shape[0] for v in values)
        fill = -100 if key == "labels" else 0
        out[key] = torch.stack([F.pad(v, (0, width - v.shape[0]), value=fill) if v.dim() == 1 else v for v in values])
    return out


def as_data_loader(loader: Any) -> DataLoader:
    """A ``DataLoader`` of single rows yielding the same batches as ``loader`` (kept as is if it is one)."""
    if isinstance(loader, DataLoader):
        return loader
    batches = list(loader)
    if not batches:
        raise ValueError("dp_sgd.wrap_training: the loader holds no batch")
    size = len(next(iter(batches[0].values())))
    rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(next(iter(b.values()))))]
    return DataLoader(rows, batch_size=size, shuffle=False, collate_fn=pad_collate)


def dummy_batch(loader: DataLoader) -> dict[str, Tensor]:
    """One all-zero row shaped like the loader's data (attention mask ones, so the loss is finite)."""
    batch = loader.collate_fn([loader.dataset[0]])
    return {k: torch.ones_like(v) if k == "attention_mask" else torch.zeros_like(v) for k, v in batch.items()}


class NonEmptyBatches:
    """Iterates a Poisson loader, replacing empty batches (HF models reject batch size 0) by a dummy."""

    def __init__(self, loader: Any, source: DataLoader) -> None:
        self.loader, self.source = loader, source

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            empty = not batch or (
                isinstance(batch, Mapping) and any(torch.is_tensor(v) and v.shape[0] == 0 for v in batch.values())
            )
            yield dummy_batch(self.source) if empty else batch


def private_grads(optimizer: Any) -> bool:
    """Turn the per-sample gradients of the last backward into the DP gradient in ``p.grad``.

    For a gradient probe under DP-SGD: what leaves the client is the clipped, noised, averaged
    gradient, never the raw one. Counts as one step in the client's accountant.
    """
    return bool(optimizer.pre_step())


def train_local(
    defense: DPSGDClient,
    model: nn.Module,
    optimizer: Any,
    loader: Iterable,
    client: ClientInfo,
    steps: int,
    compute_loss: Callable[[nn.Module, Any], Any],
) -> list[float]:
    """Run ``steps`` local DP-SGD steps through the hook (restarting the loader when it runs out);
    a reference for the harness and the tests. Returns the losses."""
    model, optimizer, loader = defense.wrap_training(model, optimizer, loader, client)
    losses: list[float] = []
    try:
        while len(losses) < steps:
            before = len(losses)
            for batch in loader:
                optimizer.zero_grad()
                loss = compute_loss(model, batch)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                if len(losses) == steps:
                    break
            if len(losses) == before:
                raise ValueError("train_local: the loader yielded no batch")
    finally:
        defense.release()
    return losses
