"""The contracts between the harness, the defenses and the attacks.

A defense is two roles that share nothing but ``WirePayload``s and public setup facts: a
``ClientRole`` (sees a client's update, holds keys, ``protect``/``finalize``) and a ``ServerRole``
(``aggregate``, and ``observe``/``known_start``, from which the engine builds the attacker's view out
of the server's transcript alone). An attack sees only that ``AttackerView``. The harness alone holds
the true private batch and scores reconstructions against it. Optional hooks are declared here once,
with no-op defaults, so an engine never probes a defense with ``getattr`` (the seam Flower's
ClientApp / Strategy split plugs into).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from torch import Tensor


@dataclass(frozen=True)
class LoRAFactors:
    """One adapted module: delta W = scale * B @ A, with A of shape (r, n) and B of shape (m, r)."""

    A: Tensor
    B: Tensor
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self) -> Tensor:
        return self.scale * (self.B @ self.A)


@dataclass(frozen=True)
class ClientInfo:
    """Public facts about one client: its device tier, LoRA rank and encryption budget."""

    client_id: int
    tier: str
    rank: int
    budget: float  # fraction of LoRA-A columns per module this client can afford to encrypt
    alpha: float  # LoRA alpha; the client's scaling is alpha / rank

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class FederationInfo:
    """What every defense learns at setup: clients, module shapes and the round plan."""

    clients: tuple[ClientInfo, ...]
    module_shapes: Mapping[str, tuple[int, int]]  # module -> (out_features m, in_features n)
    rounds: int
    clients_per_round: int
    seed: int
    device: str = "cpu"

    @property
    def sample_rate(self) -> float:
        return self.clients_per_round / max(1, len(self.clients))

    def client(self, client_id: int) -> ClientInfo:
        return self.clients[client_id]


@dataclass(frozen=True)
class ClientUpdate:
    """A client's result of local training, in its own rank; never shown to the server or an attack.

    ``kind`` is ``"weights"`` for a federated round (factors after local training), ``"grad"`` when
    the attack probe observes a single-step gradient (factors hold dL/dA and dL/dB). ``prev`` holds
    the factors the client started from, which the server sent it and therefore knows.
    """

    client: ClientInfo
    round: int
    factors: Mapping[str, LoRAFactors]
    n_samples: int
    input_sq_norms: Mapping[str, Tensor]  # module -> (n,) sum over calibration tokens of x_j^2
    grads: Mapping[str, LoRAFactors] | None = None  # gradient at the last local step
    prev: Mapping[str, LoRAFactors] | None = None
    kind: str = "weights"


@dataclass
class WirePayload:
    """Everything that crosses the network in one message. Bytes are counted here, nowhere else.

    ``plain`` holds plaintext tensors, ``cipher`` serialized ciphertexts, ``meta`` public JSON-able
    metadata (indices, ranks, sample counts). ``timings`` is a side channel for the defense's own
    cost measurements (enc_s, dec_s, ...) and never counts as traffic.
    """

    sender: str
    plain: dict[str, Tensor] = field(default_factory=dict)
    cipher: dict[str, bytes | list[bytes]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def plain_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.plain.values())

    def cipher_bytes(self) -> int:
        total = 0
        for blob in self.cipher.values():
            total += len(blob) if isinstance(blob, bytes | bytearray) else sum(len(b) for b in blob)
        return total

    def meta_bytes(self) -> int:
        return len(json.dumps(self.meta, separators=(",", ":"), default=_json_default).encode())

    def nbytes(self) -> int:
        return self.plain_bytes() + self.cipher_bytes() + self.meta_bytes()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"WirePayload.meta must be JSON-able, got {type(obj).__name__}")


@dataclass(frozen=True)
class ObservedModule:
    """What the server sees of one module's update.

    ``A``/``B`` hold the visible values with hidden coordinates set to zero (``None`` when nothing of
    that factor is visible). ``A_hidden``/``B_hidden`` are boolean masks of what the server cannot
    read; the server always knows which coordinates it did not receive. ``column_order`` maps an
    observed column of A to the original input-feature index where the server can know it (``None``
    means identity). ``columns_permuted`` says a permutation the server lacks scrambles the columns.
    """

    A: Tensor | None
    B: Tensor | None
    scale: float
    A_hidden: Tensor | None = None
    B_hidden: Tensor | None = None
    column_order: tuple[int, ...] | None = None
    columns_permuted: bool = False


START_KNOWN = ("exact", "estimate", "none")


@dataclass(frozen=True)
class StartKnowledge:
    """What the server can know of the factors a client started its round from.

    ``factors`` is the server's best reconstruction from messages it sent (``None``: nothing), in the
    column order its own view of that client's upload uses; ``known`` says whether that is ``exact``
    (the server can replay the client's deterministic finalize), an ``estimate`` (ciphertext or masks
    stand in the way) or ``none``.
    """

    factors: Mapping[str, LoRAFactors] | None
    known: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.known not in START_KNOWN:
            raise ValueError(f"StartKnowledge.known must be one of {', '.join(START_KNOWN)}, got {self.known!r}")

    @classmethod
    def nothing(cls, note: str) -> StartKnowledge:
        return cls(None, "none", note)


@dataclass(frozen=True)
class AttackerView:
    """The only input of an attack: what an honest-but-curious server holds about one client update.

    Built by the engine from the server's transcript alone: ``modules`` is what the server role's
    ``observe`` exposes of the upload; ``prev`` the server's knowledge of the client's starting
    factors (``start_known`` says exact, estimate or none); ``model`` a public copy of the base model
    with the global delta the server can compute merged (never the client's adapter); ``lr``,
    ``local_steps``, ``batch_size`` are hyperparameters the server set; ``candidates`` texts whose
    membership an inference attack scores.
    """

    defense: str
    kind: str  # "grad" | "sgd" | "weights" (a real round upload)
    modules: Mapping[str, ObservedModule]
    leaked: Mapping[str, Any] = field(default_factory=dict)
    cipher_bytes: int = 0
    prev: Mapping[str, LoRAFactors] | None = None
    start_known: str = "none"
    lr: float | None = None
    local_steps: int = 1
    batch_size: int | None = None
    model: Any = None
    tokenizer: Any = None
    task: str = "classification"
    template: str = "{text}"
    candidates: Sequence[str] | None = None
    note: str = ""

    @property
    def is_clear(self) -> bool:
        """Nothing hidden, permuted or reordered: an attack's adaptive mode has nothing to adapt to."""
        for m in self.modules.values():
            for mask in (m.A_hidden, m.B_hidden):
                if mask is not None and bool(mask.any()):
                    return False
            if m.column_order is not None or m.columns_permuted:
                return False
        return True

    @property
    def has_plaintext(self) -> bool:
        return any(m.A is not None or m.B is not None for m in self.modules.values())

    @property
    def prev_exact(self) -> bool:
        return self.prev is not None and self.start_known == "exact"


RECONSTRUCTION_STATUS = ("ok", "abstained")


@dataclass
class Reconstruction:
    """An attack's output. ``texts`` are reconstructed inputs (one per recovered sequence);
    ``membership_scores`` align with ``AttackerView.candidates`` (higher = more likely member);
    ``membership_scores_by`` holds every score an attack computed, by name (the primary one included),
    each reported with its own AUC and TPR columns.

    ``status`` is ``abstained`` when the attack gave up (no usable input, a precondition unmet):
    ``note`` says why, and the cell is reported apart, never as a defense win."""

    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] | None = None
    membership_scores: list[float] | None = None
    membership_scores_by: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    note: str = ""
    status: str = "ok"

    @classmethod
    def abstain(cls, why: str, **extra: float) -> Reconstruction:
        return cls(note=why, status="abstained", extra=dict(extra))


# ---- the two roles of a defense ------------------------------------------------------------


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

    def wrap_training(self, model: Any, optimizer: Any, loader: Any, client: ClientInfo) -> tuple[Any, Any, Any]:
        """Change local training itself (e.g. DP-SGD); the engine trains with what this returns."""
        return model, optimizer, loader

    def release(self) -> None:
        """Undo ``wrap_training``'s changes to the model once a client's training is over."""

    def protect(self, update: ClientUpdate) -> WirePayload:
        raise NotImplementedError

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        """A client's own-rank factors from the server's broadcast."""
        raise NotImplementedError

    def privacy_params(self) -> dict[str, Any]:
        """Privacy facts only the clients can tell (e.g. a per-client DP accountant)."""
        return {}


class ServerRole:
    """The server side of a defense: never holds a secret key, a client's factors or its start.

    Everything it knows arrives as messages; ``observe`` and ``known_start`` turn messages it received
    and sent into what an attacker on the server can use.
    """

    def setup(self, fed: FederationInfo, hello: Sequence[WirePayload]) -> None:
        """Public facts and the clients' setup messages (e.g. a public context)."""
        self.fed = fed

    def negotiate(self, proposals: Sequence[WirePayload]) -> WirePayload | None:
        """The reply to a round's ``ClientRole.propose`` messages (None when there were none)."""
        return None

    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload:
        raise NotImplementedError

    def observe(self, payload: WirePayload) -> AttackerView:
        """What the server can read of one upload (modules, masks, leaked metadata)."""
        raise NotImplementedError

    def known_start(self, broadcast: WirePayload, client: ClientInfo) -> StartKnowledge:
        """What the server can compute of ``client``'s start from a broadcast it sent it."""
        return StartKnowledge.nothing("the server cannot replay this defense's finalize")

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
    # privacy_params() key -> row column it fills (the row schema lives in benchmark.results)
    columns: ClassVar[Mapping[str, str]] = {"encrypted_fraction": "encrypted_fraction"}

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.client = self.Client(self.params)
        self.server = self.Server(self.params)

    @property
    def stack(self) -> tuple[str, ...]:
        """The registered names this defense is made of, outermost first."""
        return (self.name,)

    def fresh(self) -> Defense:
        """A new defense with the same parameters and no state: what a client process rebuilds."""
        return type(self)(self.params)

    def privacy_params(self) -> dict[str, Any]:
        """The row's privacy facts: public ones from the server role, client-only ones on top."""
        return {**self.server.privacy_params(), **self.client.privacy_params()}

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


# ---- defenses that wrap defenses -----------------------------------------------------------


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

    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload:
        return self.transform_aggregate(self.inner.aggregate(payloads))

    def observe(self, payload: WirePayload) -> AttackerView:
        view = self.inner.observe(payload)
        return replace(view, defense=f"{self.name}+{view.defense}")

    def known_start(self, broadcast: WirePayload, client: ClientInfo) -> StartKnowledge:
        return self.inner.known_start(broadcast, client)

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

    def fresh(self) -> Defense:
        return Stacked(self.layers, self.inner.fresh())

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

    def paper_method(self) -> str | None:
        method = self.inner.paper_method()
        for cls, _ in reversed(self.layers):
            method = cls.paper_method(method)
        return method

    def cost_role(self) -> str | None:
        return None  # the paper's cost comparison has no wrapped defense


# What an attack can target, and what that means for its cells.
ATTACK_TARGETS: Mapping[str, str] = {
    "probe": "a probe case's view, the target client's probe update; one cell per probe case",
    "round": "the round upload with membership candidates; one cell",
}
ATTACK_MODES = ("naive", "adaptive")

# What a view can offer an attack, in the order an attack checks them (the first one missing is the
# abstention reason): the test a view must pass, and why an attack cannot run without it.
VIEW_OFFERS: Mapping[str, tuple[Callable[[AttackerView], bool], str]] = {
    "plaintext": (lambda v: v.has_plaintext, "no plaintext update visible (ciphertext only)"),
    "model": (lambda v: v.model is not None and v.tokenizer is not None,
              "the view carries no public model or tokenizer"),
    "candidates": (lambda v: bool(v.candidates), "the view carries no membership candidates"),
    "grad": (lambda v: v.kind == "grad", "the view holds no single-step gradient"),
}


def view_lacks(view: AttackerView | None, requires: frozenset[str]) -> list[str]:
    """What of ``requires`` the view does not offer (sorted; empty when it offers all).

    The runner records a cell whose view lacks something as ``incompatible`` before the attack runs;
    ``None`` stands for no view at all (the target client sent nothing that round)."""
    if view is None:
        return ["a view (the target client sent nothing this round)"]
    return [r for r in sorted(requires) if not VIEW_OFFERS[r][0](view)]


class Abstain(Exception):  # noqa: N818 - a signal carrying the reason, not an error
    """Raised anywhere inside ``Attack._reconstruct`` (or a toolkit helper it calls) to give up on a
    view: ``Attack.reconstruct`` turns it into ``Reconstruction.abstain(reason)``, so a precondition
    checked deep in shared code needs no return-value plumbing through every attack."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AttackParams:
    """The base of every attack's ``Params``: frozen (a cell hashes them) and with a ``mode``.

    ``attack`` names the registered attack, so that a bad value is reported as ``<attack>.<param>``,
    the key a user writes in ``--set attack.<attack>.<param>=...``. Subclasses add fields with
    ``field(default=..., metadata={"help": ...})`` and call ``super().__post_init__()`` first."""

    attack: ClassVar[str] = "attack"
    mode: str = field(default="naive", metadata={"help": "naive: the published attack as is; adaptive: also "
                                                         "uses what the transcript reveals (hidden masks, a "
                                                         "known column order)"})

    def __post_init__(self) -> None:
        self.require_choice("mode", ATTACK_MODES)

    def require(self, param: str, ok: bool, valid: str) -> None:
        """Raise ``ValueError("<attack>.<param> must be <valid>, got <value>")`` unless ``ok``."""
        if not ok:
            raise ValueError(f"{self.attack}.{param} must be {valid}, got {getattr(self, param)!r}")

    def require_at_least(self, low: float, *params: str) -> None:
        """Each of ``params`` is >= ``low`` (counts, sizes and weights)."""
        for param in params:
            self.require(param, getattr(self, param) >= low, f">= {low}")

    def require_fraction(self, *params: str) -> None:
        """Each of ``params`` is in (0, 1] (relative thresholds and shares)."""
        for param in params:
            self.require(param, 0 < getattr(self, param) <= 1, "in (0, 1]")

    def require_choice(self, param: str, choices: Sequence[str]) -> None:
        """``param`` is one of ``choices``."""
        self.require(param, getattr(self, param) in choices, f"one of {', '.join(choices)}")


class Attack:
    """An attack reconstructs private inputs (or scores membership) from an ``AttackerView`` alone.

    A registered attack subclasses this and declares every class attribute below; a missing or
    malformed declaration is refused when the class is defined (``__init_subclass__``), so the runner,
    ``shebench show`` and the tests read the contract instead of probing for it. ``reconstruct`` is a
    template: it abstains when the view lacks what ``requires`` names (with the reason), then calls the
    attack's own ``_reconstruct``, turning an ``Abstain`` raised there into an abstention. An attack
    that gives up is reported apart, never as a defense win.
    """

    name: ClassVar[str]
    """The registry name; rows and ``--set attack.<name>.<param>`` use it."""
    version: ClassVar[str]
    """Bumped when results change for the same params: part of every cell key."""
    target: ClassVar[str]
    """What it attacks (one of ``ATTACK_TARGETS``): ``"probe"``, a probe case's view (one cell per
    case), or ``"round"``, the round upload with membership candidates (one cell)."""
    Params: ClassVar[type[AttackParams]]
    """Its frozen parameter dataclass, with ``mode`` and help on every field."""
    requires: ClassVar[frozenset[str]]
    """What a view must offer (keys of ``VIEW_OFFERS``); a cell whose view lacks one is recorded as
    ``incompatible``, never crashed."""
    metrics: ClassVar[Mapping[str, bool]]
    """Each metric it is scored on, True when higher means the attack recovered more (the report reads
    directions from here, never guesses)."""
    modes_differ_only_on_hidden: ClassVar[bool] = False
    """True when adaptive mode differs from naive only in how it treats hidden or permuted coordinates:
    on a clear view both modes give the same answer, so the runner computes it once."""

    _DECLARED = ("name", "version", "target", "Params", "requires", "metrics")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = [a for a in cls._DECLARED if not hasattr(cls, a)]
        if missing:
            raise TypeError(f"attack class {cls.__qualname__} does not declare {', '.join(missing)} "
                            f"(every Attack declares {', '.join(cls._DECLARED)})")
        if cls.target not in ATTACK_TARGETS:
            raise TypeError(f"{cls.__qualname__}.target must be one of {', '.join(ATTACK_TARGETS)}, got {cls.target!r}")
        if not (isinstance(cls.Params, type) and issubclass(cls.Params, AttackParams)):
            raise TypeError(f"{cls.__qualname__}.Params must be a frozen dataclass subclassing AttackParams, "
                            f"got {cls.Params!r}")
        if cls.Params.attack != cls.name:
            raise TypeError(f"{cls.Params.__qualname__}.attack must be {cls.name!r} (the attack's name), "
                            f"got {cls.Params.attack!r}")
        unknown = set(cls.requires) - set(VIEW_OFFERS)
        if unknown:
            raise TypeError(f"{cls.__qualname__}.requires names {', '.join(sorted(unknown))}; a view offers "
                            f"{', '.join(VIEW_OFFERS)}")
        if not cls.metrics or not all(isinstance(v, bool) for v in cls.metrics.values()):
            raise TypeError(f"{cls.__qualname__}.metrics must map each metric to True (higher is better) or False")

    def __init__(self, params: AttackParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def reconstruct(self, view: AttackerView) -> Reconstruction:
        """The attack's answer for ``view``: an abstention with the reason when ``unusable`` finds one
        or ``_reconstruct`` raises ``Abstain``, else what ``_reconstruct`` returns."""
        why = self.unusable(view)
        if why:
            return Reconstruction.abstain(why)
        try:
            return self._reconstruct(view)
        except Abstain as gave_up:
            return Reconstruction.abstain(gave_up.reason)

    def unusable(self, view: AttackerView) -> str:
        """Why the attack cannot run on ``view`` ("" when it can): by default, the first requirement
        of ``requires`` the view does not offer, in ``VIEW_OFFERS`` order. Override to say more."""
        for need, (offered, why) in VIEW_OFFERS.items():
            if need in self.requires and not offered(view):
                return why
        return ""

    def _reconstruct(self, view: AttackerView) -> Reconstruction:
        """The attack itself, on a view that offers everything ``requires`` names."""
        raise NotImplementedError


RECONSTRUCTION_METRICS: Mapping[str, bool] = {
    "rouge1": True, "rouge2": True, "rougeL": True, "token_recall": True, "token_precision": True, "exact_match": True,
}
# ``mia_auc``/``tpr_at_*`` are the attack's primary score (chosen in its params before any run, never the
# best in hindsight); ``*_lo``/``*_hi`` bound a stratified bootstrap 95% interval; per-score columns
# ``mia_<score>_auc`` etc. sit beside them in the row.
MEMBERSHIP_METRICS: Mapping[str, bool] = {"mia_auc": True, "tpr_at_1fpr": True, "tpr_at_5fpr": True}
