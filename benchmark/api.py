"""The contracts between the harness, the defenses and the attacks.

The separation matters more than the names: a defense sees a client's update only on its client
side (``protect``/``finalize``), its server side (``aggregate``) sees only ``WirePayload``s, and an
attack sees only the ``AttackerView`` that ``Defense.observe`` builds from one payload. The harness
alone holds the true private batch and scores reconstructions against it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
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


@dataclass(frozen=True)
class AttackerView:
    """The only input of an attack: what an honest-but-curious server holds about one client update.

    ``modules`` is what the defense's ``observe`` exposes; ``prev`` the factors the server sent the
    client; ``model`` a public copy of the base model with the previous global delta merged (never
    the client's trained adapter); ``candidates`` texts whose membership an inference attack scores.
    """

    defense: str
    kind: str  # "grad" | "sgd" | "adamw"
    modules: Mapping[str, ObservedModule]
    leaked: Mapping[str, Any] = field(default_factory=dict)
    cipher_bytes: int = 0
    prev: Mapping[str, LoRAFactors] | None = None
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
    def has_plaintext(self) -> bool:
        return any(m.A is not None or m.B is not None for m in self.modules.values())


@dataclass
class Reconstruction:
    """An attack's output. ``texts`` are reconstructed inputs (one per recovered sequence);
    ``membership_scores`` align with ``AttackerView.candidates`` (higher = more likely member)."""

    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] | None = None
    membership_scores: list[float] | None = None
    extra: dict[str, float] = field(default_factory=dict)
    note: str = ""


@runtime_checkable
class Defense(Protocol):
    """A privacy defense: client-side ``protect``/``finalize``, server-side ``aggregate``.

    Optional hooks the harness calls when present:
    ``negotiate(updates) -> WirePayload | None`` before ``protect`` in a round (e.g. SHE-LoRA's
    column negotiation; the returned messages are metered), and
    ``wrap_training(model, optimizer, loader, client) -> (model, optimizer, loader)`` to change local
    training itself (e.g. DP-SGD).
    """

    name: ClassVar[str]
    version: ClassVar[str]

    def setup(self, fed: FederationInfo) -> dict[str, float]: ...

    def protect(self, update: ClientUpdate) -> WirePayload: ...

    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload: ...

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]: ...

    def observe(self, payload: WirePayload) -> AttackerView: ...

    def privacy_params(self) -> dict[str, Any]: ...


@runtime_checkable
class Attack(Protocol):
    """An attack reconstructs private inputs (or scores membership) from an ``AttackerView`` alone.

    ``requires`` names what the view must offer (``"plaintext"``, ``"model"``, ``"candidates"``,
    ``"grad"``); a cell whose view lacks one is recorded as ``incompatible``, never crashed.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    requires: ClassVar[frozenset[str]]

    def reconstruct(self, view: AttackerView) -> Reconstruction: ...


def zeros_like_factors(factors: Mapping[str, LoRAFactors]) -> dict[str, LoRAFactors]:
    return {k: LoRAFactors(torch.zeros_like(f.A), torch.zeros_like(f.B), f.scale) for k, f in factors.items()}
