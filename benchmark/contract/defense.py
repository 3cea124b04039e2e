"""A defense: two roles that share nothing but payloads and public setup facts. The client role sees
a client's update and may hold keys; the server role never holds a secret key, a client's factors
or its start. Optional hooks are declared here once with no-op defaults, so an engine never probes
a defense with ``getattr``; what reports need to know about a defense, it declares here too."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from benchmark.contract.messages import ClientInfo, ClientUpdate, FederationInfo, LoRAFactors, WirePayload
from benchmark.contract.views import AttackerView, StartKnowledge


class SumPrivatizer(Protocol):
    """Distributed DP's step inside a defense that shows the server only the round's sum: turns one
    client's summands (``vectors``: one per module of ``sorted(update.factors)``, already multiplied by
    the client's aggregation ``weight``) into the noisy ones it uploads, knowing that a released sum
    holds at least ``min_summands`` uploads."""

    def __call__(self, update: ClientUpdate, vectors: list[Any], weight: float, min_summands: int) -> list[Any]: ...


@dataclass(frozen=True)
class SecretSum:
    """What a defense whose server sees only the round's sum tells a distributed-DP layer before any
    work: the fewest uploads a released sum can hold (fewer and the round fails, nothing is released)
    and the largest magnitude one entry of an upload can carry without being clipped, set by the
    parameter ``bound_key`` (layer first: ``secagg.clipping_range``)."""

    min_summands: int
    entry_bound: float
    bound_key: str
    # SecAgg+'s settings for such a round (num_shares, threshold, clipping_range, quantization_range,
    # modulus_range, max_weight: Flower's SecAggPlusWorkflow's), for an engine that runs Flower's
    # protocol itself (its clients then give ``ClientRole.secret_summands``, its server role gets
    # ``ServerRole.aggregate_sum``); empty: only the defense's own protocol can compute the sum
    secagg_plus: Mapping[str, float] = field(default_factory=dict)


class ClientRole:
    """The client side of a defense: sees updates, may hold keys; talks to the server by messages.

    In the in-process engine one object serves every client (they share a secret key in the
    single-key threat model); per-client state is keyed by client id. Hooks other than ``protect``
    and ``finalize`` are optional and default to doing nothing.
    """

    def setup(self, fed: FederationInfo) -> WirePayload | None:
        """Prepare keys; return a message for the server (e.g. a public CKKS context), or None."""
        return None

    def setup_costs(self) -> dict[str, float]:
        """Client-side setup measurements (key generation time, context sizes)."""
        return {}

    def propose(self, update: ClientUpdate) -> WirePayload | None:
        """A negotiation message before ``protect`` in a round (e.g. SHE-LoRA's top-k lists)."""
        return None

    def accept(self, reply: WirePayload) -> None:
        """The server's negotiation reply, delivered to every participant of the round."""

    def answer(self, message: WirePayload, client: ClientInfo) -> WirePayload | None:
        """``client``'s reply to a message the server's ``exchange`` addressed to it alone (None: no
        reply, e.g. it only had to store what it received)."""
        return None

    def adopt_start(self, sent: Mapping[str, LoRAFactors], own: Callable[[], dict[str, LoRAFactors]],
                    client: ClientInfo) -> dict[str, LoRAFactors]:
        """The factors ``client`` starts round 1 from when the server drew them and sent them (``sent``,
        read from its ``init`` message); ``own()`` draws the client's private ones instead (from its
        own stream, as with ``threat.init = client``). Default: the server's, as peft-style federations
        do. A defense that overrides this says what the server then knows in ``ServerRole.known_init``."""
        return dict(sent)

    def wrap_training(self, model: Any, optimizer: Any, loader: Any, client: ClientInfo) -> tuple[Any, Any, Any]:
        """Change local training itself (e.g. DP-SGD); the engine trains with what this returns."""
        return model, optimizer, loader

    def release(self) -> None:
        """Undo ``wrap_training``'s changes to the model once a client's training is over."""

    def protect(self, update: ClientUpdate) -> WirePayload | None:
        """The upload of ``update``; None when the client drops out of the round and sends nothing."""
        raise NotImplementedError

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        """A client's own-rank factors from the server's broadcast."""
        raise NotImplementedError

    def privacy_params(self) -> dict[str, Any]:
        """Privacy facts only the clients can tell (e.g. a per-client DP accountant)."""
        return {}

    def privatize_sum(self, privatizer: SumPrivatizer) -> bool:
        """Apply ``privatizer`` to every upload's summands before they are encoded, if the server sees
        only their sum (distributed DP); False (the default): uploads are seen one by one, and a DP
        layer must noise each update in full itself."""
        return False

    def secret_summands(self, update: ClientUpdate,
                        participants: Sequence[int]) -> tuple[list[Any], dict[str, Any]] | None:
        """What this client adds to a round's secret sum when the engine runs the secure aggregation
        itself (``SecretSum.secagg_plus``): one float64 array per module of ``sorted(update.factors)``,
        unweighted (the protocol weights it by ``update.n_samples``), noise share included, and the
        metadata its masked upload carries; None: it drops out after sharing its keys. ``participants``:
        the round's client ids (public to every participant of the key agreement)."""
        raise NotImplementedError(f"{type(self).__name__} declares no secret sum")


class ServerRole:
    """The server side of a defense: never holds a secret key, a client's factors or its start.

    Everything it knows arrives as messages; ``observe``, ``known_start``, ``known_init`` and
    ``start_from_upload`` turn messages it received and sent into what an attacker on the server can use.
    """

    def setup(self, fed: FederationInfo, hello: Sequence[WirePayload]) -> None:
        """Public facts and the clients' setup messages (e.g. a public context)."""
        self.fed = fed

    def negotiate(self, proposals: Sequence[WirePayload]) -> WirePayload | None:
        """The reply to a round's ``ClientRole.propose`` messages (None when there were none)."""
        return None

    def exchange(self, received: Sequence[WirePayload]) -> Mapping[int, WirePayload]:
        """Messages for single participants of the round (client id -> message) beyond the negotiation,
        e.g. SecAgg+'s key forwarding and unmasking. The round asks after the negotiation (``received``
        empty) and again right after the uploads (``received``: the uploads), each time again with the
        answers to what it sent until this returns nothing. Default: nothing to exchange."""
        return {}

    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload:
        raise NotImplementedError

    def aggregate_sum(self, mean: Sequence[Any], uploads: Sequence[WirePayload]) -> WirePayload:
        """The broadcast from a round's weighted mean of ``ClientRole.secret_summands`` (one array per
        module) that the engine's own secure aggregation unmasked from ``uploads`` (the masked vectors
        as received)."""
        raise NotImplementedError(f"{type(self).__name__} declares no secret sum")

    def observe(self, payload: WirePayload) -> AttackerView:
        """What the server can read of one upload (modules, masks, leaked metadata)."""
        raise NotImplementedError

    def known_start(self, broadcast: WirePayload, client: ClientInfo) -> StartKnowledge:
        """What the server can compute of ``client``'s start from a broadcast it sent it."""
        return StartKnowledge.nothing("the server cannot replay this defense's finalize")

    def unmasked_sum(self) -> Mapping[str, Any] | None:
        """For a server that sees only the round's sum (``Defense.secret_sum``): that sum as it last
        unmasked it, per module the dense weighted mean of the uploads' deltas (m x n tensors), which
        the attack probe reads as the server's observation. None (the default): no such sum."""
        return None

    def known_init(self, sent: Mapping[str, LoRAFactors], client: ClientInfo) -> StartKnowledge:
        """What the server knows of ``client``'s round-1 start after sending it the factors ``sent``
        (an ``init`` message). Default: exactly those, since the client role's ``adopt_start`` keeps
        them; a defense whose clients replace them says so here (``StartKnowledge.nothing``), and the
        engine then falls back on ``start_from_upload``."""
        return StartKnowledge(dict(sent), "exact", "the server drew and sent the round-1 factors")

    def start_from_upload(self, upload: WirePayload, client: ClientInfo) -> StartKnowledge:
        """What the server can infer of ``client``'s private round-1 start (one it never saw) from that
        client's own upload of the same round (its start plus its local change; B starts at zero, a
        public fact of LoRA's initialisation), in the column order of ``observe``'s view. Default:
        nothing (the upload does not show the start's factors)."""
        return StartKnowledge.nothing("the upload does not show the client's factors")

    def privacy_params(self) -> dict[str, Any]:
        return {}


ENCRYPTS = ("none", "selective", "all")


@dataclass(frozen=True)
class TierFacts:
    """One device tier as a defense applies it: the tier's LoRA rank, its configured encryption
    budget, and the share of LoRA-A columns (or weights) the defense encrypts for it (``applied``;
    None when the defense encrypts nothing selectively)."""

    tier: str
    rank: int
    budget: float
    applied: float | None


class Defense:
    """A registered defense: its name, ``Params``, and its two roles built from the same public params.

    Engines hand ``client`` to client code and ``server`` to server code; the two objects share no
    state (a contract test walks the server's object graph). What reports need to know about a
    defense (how much it encrypts per tier, which of the paper's methods it plays, which row columns
    its privacy facts fill) is declared here, so that report code never names a defense."""

    name: ClassVar[str]
    version: ClassVar[str] = "2"
    Params: ClassVar[type]
    Client: ClassVar[type[ClientRole]]
    Server: ClassVar[type[ServerRole]]
    encrypts: ClassVar[str] = "none"  # one of ENCRYPTS: what share of an update travels as ciphertext
    # privacy_params() key -> row column it fills (the row schema lives in benchmark.running.results)
    columns: ClassVar[Mapping[str, str]] = {"encrypted_fraction": "encrypted_fraction"}

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.client = self.Client(self.params)
        self.server = self.Server(self.params)

    @property
    def stack(self) -> tuple[str, ...]:
        """The registered names this defense is made of, outermost first."""
        return (self.name,)

    def privacy_params(self) -> dict[str, Any]:
        """The row's privacy facts: public ones from the server role, client-only ones on top."""
        return {**self.server.privacy_params(), **self.client.privacy_params()}

    @classmethod
    def check(cls, params: Any, fed: FederationInfo) -> str | None:
        """Why ``params`` cannot work in a federation of these public facts, starting with the parameter's
        name (None: they can). The harness asks before any work, so a setting the defense could only
        refuse mid-run fails early."""
        return None

    def secret_sum(self, clients_per_round: int) -> SecretSum | None:
        """What a distributed-DP layer must know of the sum the server sees in rounds of this many
        clients (None, the default: the server sees each upload)."""
        return None

    def applied_budget(self, tier: ClientInfo) -> float | None:
        """The share this defense encrypts for a client of ``tier`` (None: nothing selectively)."""
        return {"none": None, "all": 1.0}.get(self.encrypts)

    def tier_facts(self, clients: Sequence[ClientInfo]) -> list[TierFacts]:
        """Each tier's rank and budget as this defense applies them, in rank order."""
        firsts = {c.tier: c for c in reversed(clients)}
        return [TierFacts(c.tier, c.rank, c.budget, self.applied_budget(c))
                for c in sorted(firsts.values(), key=lambda c: (c.rank, c.tier))]

    def paper_method(self) -> str | None:
        """Which method of the SHE-LoRA paper this defense plays (None: none of them)."""
        return None

    def cost_role(self) -> str | None:
        """The role this defense plays in the paper's cost comparison (None: it is not compared)."""
        return None

    def column_values(self, privacy: Mapping[str, Any]) -> dict[str, Any]:
        """Row columns filled from ``privacy`` (the dict ``privacy_params`` returned), per ``columns``."""
        return {col: privacy[key] for key, col in self.columns.items() if key in privacy}


