"""Defenses that wrap defenses: a wrapper's client side transforms the update before the inner client
role proposes and protects it, its server side may transform the aggregate; every other hook goes
to the inner role. ``Stacked`` builds wrappers over a defense as one ``Defense``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from benchmark.contract.defense import ClientRole, Defense, SecretSum, ServerRole, SumPrivatizer
from benchmark.contract.messages import ClientInfo, ClientUpdate, FederationInfo, LoRAFactors, WirePayload
from benchmark.contract.views import AttackerView, StartKnowledge


class WrapperClient(ClientRole):
    """A wrapper's client side: every hook goes to the inner client role; a wrapper overrides what it
    changes. ``transform`` turns the update before the inner role proposes or protects it."""

    def __init__(self, params: Any, inner: ClientRole) -> None:
        self.params, self.inner = params, inner
        self.fed: FederationInfo | None = None

    def transform(self, update: ClientUpdate) -> ClientUpdate:
        """The update the inner defense sees (the same for ``propose`` and ``protect``: deterministic)."""
        return update

    def setup(self, fed: FederationInfo) -> WirePayload | None:
        self.fed = fed
        return self.inner.setup(fed)

    def setup_costs(self) -> dict[str, float]:
        return self.inner.setup_costs()

    def propose(self, update: ClientUpdate) -> WirePayload | None:
        return self.inner.propose(self.transform(update))

    def accept(self, reply: WirePayload) -> None:
        self.inner.accept(reply)

    def answer(self, message: WirePayload, client: ClientInfo) -> WirePayload | None:
        return self.inner.answer(message, client)

    def adopt_start(self, sent: Mapping[str, LoRAFactors], own: Callable[[], dict[str, LoRAFactors]],
                    client: ClientInfo) -> dict[str, LoRAFactors]:
        return self.inner.adopt_start(sent, own, client)

    def wrap_training(self, model: Any, optimizer: Any, loader: Any, client: ClientInfo) -> tuple[Any, Any, Any]:
        return self.inner.wrap_training(model, optimizer, loader, client)

    def release(self) -> None:
        self.inner.release()

    def protect(self, update: ClientUpdate) -> WirePayload:
        return self.inner.protect(self.transform(update))

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        return self.inner.finalize(message, client)

    def privacy_params(self) -> dict[str, Any]:
        return self.inner.privacy_params()

    def privatize_sum(self, privatizer: SumPrivatizer) -> bool:
        return self.inner.privatize_sum(privatizer)

    def secret_summands(self, update: ClientUpdate,
                        participants: Sequence[int]) -> tuple[list[Any], dict[str, Any]] | None:
        return self.inner.secret_summands(self.transform(update), participants)


class WrapperServer(ServerRole):
    """A wrapper's server side: every hook goes to the inner server role; ``transform_aggregate``
    may change the inner aggregate before it is broadcast. It holds no more than the inner role."""

    name: ClassVar[str] = "wrapper"

    def __init__(self, params: Any, inner: ServerRole) -> None:
        self.params, self.inner = params, inner

    def transform_aggregate(self, message: WirePayload) -> WirePayload:
        return message

    def setup(self, fed: FederationInfo, hello: Sequence[WirePayload]) -> None:
        self.fed = fed
        self.inner.setup(fed, hello)

    def negotiate(self, proposals: Sequence[WirePayload]) -> WirePayload | None:
        return self.inner.negotiate(proposals)

    def exchange(self, received: Sequence[WirePayload]) -> Mapping[int, WirePayload]:
        return self.inner.exchange(received)

    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload:
        return self.transform_aggregate(self.inner.aggregate(payloads))

    def aggregate_sum(self, mean: Sequence[Any], uploads: Sequence[WirePayload]) -> WirePayload:
        return self.transform_aggregate(self.inner.aggregate_sum(mean, uploads))

    def observe(self, payload: WirePayload) -> AttackerView:
        view = self.inner.observe(payload)
        return replace(view, defense=f"{self.name}+{view.defense}")

    def known_start(self, broadcast: WirePayload, client: ClientInfo) -> StartKnowledge:
        return self.inner.known_start(broadcast, client)

    def unmasked_sum(self) -> Mapping[str, Any] | None:
        return self.inner.unmasked_sum()

    def known_init(self, sent: Mapping[str, LoRAFactors], client: ClientInfo) -> StartKnowledge:
        return self.inner.known_init(sent, client)

    def start_from_upload(self, upload: WirePayload, client: ClientInfo) -> StartKnowledge:
        return self.inner.start_from_upload(upload, client)

    def privacy_params(self) -> dict[str, Any]:
        return self.inner.privacy_params()


class Wrapper:
    """A registered wrapper: a defense layer that sits on any inner defense it ``can_wrap``.

    Its ``Client``/``Server`` take ``(params, inner_role)``. Alone on the command line a wrapper runs
    over ``default_inner`` (``dp`` is ``dp+plain_lora``). ``family``: two layers of one family cannot
    share a stack (two DP mechanisms would each claim the row's epsilon)."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Params: ClassVar[type]
    Client: ClassVar[type[WrapperClient]]
    Server: ClassVar[type[WrapperServer]]
    default_inner: ClassVar[str] = "plain_lora"
    family: ClassVar[str] = ""
    columns: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def check(cls, params: Any, fed: FederationInfo) -> str | None:
        """Why ``params`` cannot work in a federation of these public facts, starting with the parameter's
        name (None: they can); asked before any work."""
        return None

    @classmethod
    def check_inner(cls, params: Any, inner: Defense, fed: FederationInfo) -> str | None:
        """Why ``params`` cannot work over ``inner``'s settings in this federation, starting with the
        parameter's name, layer first (``secagg.clipping_range=...``); asked before any work."""
        return None

    @classmethod
    def cannot_wrap(cls, inner: Defense) -> str | None:
        """Why this wrapper cannot sit on ``inner`` (None: it can)."""
        return None

    @classmethod
    def over(cls, inner: Defense, params: Any = None) -> Stacked:
        """This wrapper (default parameters unless given) around ``inner``."""
        why = cls.cannot_wrap(inner)
        if why:
            raise ValueError(f"{cls.name} cannot wrap {'+'.join(inner.stack)}: {why}")
        return Stacked([(cls, params if params is not None else cls.Params())], inner)

    @classmethod
    def paper_method(cls, inner: str | None) -> str | None:
        """The paper method the wrapped stack plays, given the inner one's."""
        return inner


class Stacked(Defense):
    """Wrappers over an inner defense, built as one ``Defense`` (``outer.Client(params, inner.client)``
    ...). The wrappers' roles hold the inner roles: the two sides still share nothing."""

    name: ClassVar[str] = "stack"

    def __init__(self, layers: Sequence[tuple[type[Wrapper], Any]], inner: Defense) -> None:
        self.layers, self.inner = tuple(layers), inner
        self.params = inner.params
        client, server = inner.client, inner.server
        for cls, params in reversed(self.layers):
            client, server = cls.Client(params, client), cls.Server(params, server)
        self.client, self.server = client, server

    @property
    def stack(self) -> tuple[str, ...]:
        return (*(cls.name for cls, _ in self.layers), *self.inner.stack)

    @property
    def encrypts(self) -> str:  # type: ignore[override]
        return self.inner.encrypts

    @property
    def columns(self) -> Mapping[str, str]:  # type: ignore[override]
        merged = dict(self.inner.columns)
        for cls, _ in self.layers:
            merged.update(cls.columns)
        return merged

    def applied_budget(self, tier: ClientInfo) -> float | None:
        return self.inner.applied_budget(tier)

    def secret_sum(self, clients_per_round: int) -> SecretSum | None:
        return self.inner.secret_sum(clients_per_round)

    def paper_method(self) -> str | None:
        method = self.inner.paper_method()
        for cls, _ in reversed(self.layers):
            method = cls.paper_method(method)
        return method

    def cost_role(self) -> str | None:
        return None  # the paper's cost comparison has no wrapped defense


