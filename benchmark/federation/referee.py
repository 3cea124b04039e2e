"""The referee: what the harness alone does with the model (never a party to the protocol).

It draws the server's round-1 factors when the threat says the server does, evaluates the global
model, builds the public models the attacker's views carry, and runs the probe with the truth only it
holds. ``ModelReferee`` does this on a process's ``Assets``; the cost engine has a referee with no
model at all. The driver asks for these through ``Referee`` and never knows which it has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from benchmark.contract import ClientInfo, SecretSum, WirePayload
from benchmark.federation.assets import Assets
from benchmark.federation.endpoint import ClientEndpoint
from benchmark.federation.lora import LoRAHost, is_head
from benchmark.federation.models import shared_copy
from benchmark.federation.probe import ProbeResult, ProbeRound, observe
from benchmark.federation.seeding import torch_generator
from benchmark.federation.train import evaluate, verbalizer
from benchmark.federation.transcript import PublicFacts


class Referee(Protocol):
    """The harness's model-side duties in a run (see the module docstring)."""

    tokenizer: Any

    def initial_head(self) -> dict[str, Tensor]: ...

    def init_message(self, client: ClientInfo) -> WirePayload | None:
        """The server's round-1 message to ``client``, or None when clients draw their own."""

    def evaluate(self, latest: WirePayload | None, head: dict[str, Tensor], clients: ClientEndpoint) -> dict[str, Any]:
        """Utility of the global model that ``latest`` (the last broadcast) carries."""

    def probe(self, pr: ProbeRound, progress: Callable[[str], None]) -> ProbeResult | None: ...

    def metrics(self) -> dict[str, Any]:
        """The referee's own measurements for the result (e.g. model load time)."""


class ModelReferee:
    """The referee of a run with a model: inproc and Flower."""

    def __init__(self, assets: Assets, secret_sum: SecretSum | None = None) -> None:
        self.assets = assets
        self.secret_sum = secret_sum  # the defense's declaration: its server sees only the round's sum
        self.tokenizer = assets.loaded.tokenizer
        s = assets.scenario
        self.public = PublicFacts(PublicModels(assets.host), self.tokenizer, s.task, s.data.template, assets.device,
                                  assets.spec.prompt_tokens, verbalizer(self.tokenizer, assets.spec))

    def initial_head(self) -> dict[str, Tensor]:
        return self.assets.initial_head()

    def init_message(self, client: ClientInfo) -> WirePayload | None:
        """Factors drawn as peft draws them, from a stream per rank: A goes out, B starts at zero."""
        a = self.assets
        if a.scenario.threat.init == "client":
            return None
        drawn = a.host.init_factors(client.rank, torch_generator(a.seed, "server-init", client.rank))
        return WirePayload("server", plain={f"{n}/A": f.A for n, f in drawn.items()},
                           meta={"kind": "init", "rank": client.rank,
                                 "out_features": {n: int(f.B.shape[0]) for n, f in drawn.items()}})

    def evaluate(self, latest: WirePayload | None, head: dict[str, Tensor], clients: ClientEndpoint) -> dict[str, Any]:
        """The global model as the most capable client reconstructs it from the last broadcast, with
        the averaged head, on the held-out split."""
        a = self.assets
        with torch.no_grad():
            for n, p in a.host.head_parameters().items():
                p.copy_(head[n])
        deltas: dict[str, Tensor] = {}
        if latest is not None:
            best = max(a.clients, key=lambda c: c.rank)
            deltas = {n: f.delta() for n, f in clients.finalize(latest, best, harness=True)[0].items()}
        with a.host.merged(deltas) as model:
            return evaluate(model, self.tokenizer, a.spec, a.data.test, device=a.device)

    def probe(self, pr: ProbeRound, progress: Callable[[str], None]) -> ProbeResult | None:
        return observe(self.assets, self.public, pr, progress, sum_only=self.secret_sum is not None)

    def metrics(self) -> dict[str, Any]:
        return {"model_load_s": self.assets.loaded.load_s}


class PublicModels:
    """Copies of the base model with a delta merged: all the server can build from its knowledge.
    Views of the same start share one copy (every probe batch of a round starts alike)."""

    def __init__(self, host: LoRAHost) -> None:
        self.host = host
        self.cache: dict[str, torch.nn.Module] = {}

    def __call__(self, deltas: dict[str, Tensor]) -> torch.nn.Module:
        key = content_key(deltas)
        if key not in self.cache:
            with self.host.merged(deltas) as model:
                self.cache[key] = detached_copy(model.get_base_model())
        return self.cache[key]


def content_key(deltas: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(deltas):
        t = deltas[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def detached_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The merged model without peft's adapter layers: only the adapted modules (merged weights) and
    the head are copied; the frozen rest is shared."""
    from peft.tuners.lora import LoraLayer

    adapted = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, LoraLayer))
    clone = shared_copy(model, lambda name: is_head(name) or name.startswith(adapted))
    for name, module in list(clone.named_modules()):
        if isinstance(module, LoraLayer):
            parent_name, _, child = name.rpartition(".")
            parent = clone.get_submodule(parent_name) if parent_name else clone
            setattr(parent, child, module.get_base_layer())
    clone.eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone
