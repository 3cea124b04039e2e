"""A client node: the clients' side of a federation in one process.

It owns what a client device owns: the data shards of the clients it hosts, the LoRA host they train
with, local training and the attacked probe step, and the defense's client role (one object for every
client it hosts: the single-key threat model). It never holds the server role; the round driver
reaches it only through the ``ClientEndpoint`` calls. The model and data are built on first need
(``assets``), so calls that touch the role alone (setup, protect, finalize) stay cheap in a process
that lives for one message.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from benchmark.contract import ClientInfo, ClientRole, ClientUpdate, FederationInfo, WirePayload
from benchmark.federation.assets import Assets
from benchmark.federation.data import Example
from benchmark.federation.endpoint import Factors, OneAtATime
from benchmark.federation.seeding import torch_generator
from benchmark.federation.train import LocalResult, encode, local_train, to_device
from benchmark.federation.transcript import read_init


class ClientNode(OneAtATime):
    """The ``ClientEndpoint`` of clients trained in this process."""

    def __init__(self, role: ClientRole, assets: Callable[[], Assets]) -> None:
        self.role = role
        self._build = assets

    @functools.cached_property
    def assets(self) -> Assets:
        return self._build()

    # ---- the defense's client role ------------------------------------------------------------

    def setup(self, fed: FederationInfo) -> WirePayload | None:
        return self.role.setup(fed)

    def setup_costs(self) -> dict[str, float]:
        return self.role.setup_costs()

    def propose(self, update: ClientUpdate) -> WirePayload | None:
        return self.role.propose(update)

    def accept(self, reply: WirePayload) -> None:
        self.role.accept(reply)

    def answer(self, message: WirePayload, client: ClientInfo) -> WirePayload | None:
        return self.role.answer(message, client)

    def protect(self, update: ClientUpdate) -> WirePayload | None:
        t0 = time.perf_counter()
        sent = self.role.protect(update)
        if sent is not None:  # None: the client dropped out
            sent.timings["protect_s"] = time.perf_counter() - t0  # packing, encryption and serialization
        return sent

    def finalize(self, message: WirePayload, client: ClientInfo, *, harness: bool = False) -> tuple[Factors, float]:
        t0 = time.perf_counter()
        factors = self.role.finalize(message, client)
        return factors, time.perf_counter() - t0

    def privacy_params(self) -> dict[str, Any]:
        return self.role.privacy_params()

    # ---- local computation ----------------------------------------------------------------------

    def init(self, client: ClientInfo, message: WirePayload | None) -> Factors:
        """Round-1 factors: the client's own private draw, or, when the server sent an ``init`` message,
        whatever the client role adopts of it (``ClientRole.adopt_start``: by default the server's)."""

        def own() -> Factors:
            return self.assets.host.init_factors(client.rank, torch_generator(self.assets.seed, "init", client.client_id))

        if message is None:
            return own()
        return self.role.adopt_start(read_init(message, client), own, client)

    def train(self, client: ClientInfo, rnd: int, start: Factors, head: dict[str, Tensor]) -> LocalResult:
        a, cid = self.assets, client.client_id
        return local_train(a.host, client, start, a.examples(cid), len(a.shards[cid]), a.spec, a.scenario.train,
                           a.loaded.tokenizer, torch_generator(a.seed, "batches", rnd, cid), rnd, a.device, head,
                           self.role)

    def probe_update(self, client: ClientInfo, rnd: int, start: Factors, batch: list[Example]) -> ClientUpdate:
        """``threat.steps`` SGD steps at ``threat.lr`` (or, for ``grad``, the gradient the optimizer
        would apply) on the private batch, through the client role's training wrapper (DP-SGD)."""
        a, th = self.assets, self.assets.scenario.threat
        host = a.host
        inputs = to_device(encode(a.loaded.tokenizer, a.spec, batch), a.device)
        host.use(client.rank)
        host.set_factors(client.rank, start)
        model = host.model
        model.train()
        grad_mode = th.observation == "grad"
        steps = 1 if grad_mode else th.steps
        # lr 0 for a gradient: the (possibly privatizing) optimizer fills p.grad and moves nothing
        opt = torch.optim.SGD(host.lora_parameters(client.rank), lr=0.0 if grad_mode else th.lr)
        sums: dict[str, Tensor] = {}
        model, opt, loader = self.role.wrap_training(model, opt, [inputs] * steps, client)
        try:
            for _, step_batch in zip(range(steps), loader):
                step_batch = to_device(step_batch, a.device)
                opt.zero_grad(set_to_none=True)
                with host.input_norm_hooks(sums, [step_batch["attention_mask"]]):
                    loss = model(**step_batch).loss
                loss.backward()
                opt.step()
            factors = host.get_grads(client.rank) if grad_mode else host.get_factors(client.rank)
        finally:
            self.role.release()
            host.model.eval()
        n_samples = len(a.shards[client.client_id])
        return ClientUpdate(client, rnd, factors, n_samples, sums, None, start, th.observation)
