"""What crosses between the harness, a client and the server: LoRA factors, public client and
federation facts, a client's update (never shown to the server) and the wire payload (all that
crosses the network; bytes are counted on it and nowhere else)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
        return len(json.dumps(self.meta, separators=(",", ":"), default=json_default).encode())

    def nbytes(self) -> int:
        return self.plain_bytes() + self.cipher_bytes() + self.meta_bytes()


def json_default(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"WirePayload.meta must be JSON-able, got {type(obj).__name__}")


