"""The wire meter: bytes are counted where messages cross the network, never inside a defense."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.contract import WirePayload


@dataclass
class WireMeter:
    """Counts every payload up (client -> server) and down (server -> client), per client-round.

    Uploads of local training and model messages (``broadcast``, ``init``) count per client-round;
    negotiation and setup messages are protocol overhead, totalled apart.
    """

    up: list[int] = field(default_factory=list)
    down: list[int] = field(default_factory=list)
    cipher_up: list[int] = field(default_factory=list)
    cipher_down: list[int] = field(default_factory=list)
    negotiation: int = 0
    setup: int = 0

    def count(self, kind: str, payload: WirePayload, receivers: int = 1) -> None:
        if kind == "upload":
            self.send_up(payload)
        elif kind in ("broadcast", "init"):
            self.send_down(payload, receivers)
        elif kind == "negotiation":
            self.negotiation += payload.nbytes() * receivers
        elif kind == "setup":
            self.setup += payload.nbytes() * receivers
        else:
            raise ValueError(f"wire meter: {kind!r} messages are not metered")

    def send_up(self, payload: WirePayload) -> WirePayload:
        self.up.append(payload.nbytes())
        self.cipher_up.append(payload.cipher_bytes())
        return payload

    def send_down(self, payload: WirePayload, receivers: int = 1) -> WirePayload:
        for _ in range(receivers):
            self.down.append(payload.nbytes())
            self.cipher_down.append(payload.cipher_bytes())
        return payload

    @staticmethod
    def _mean(xs: list[int]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "bytes_up_per_client_round": self._mean(self.up),
            "bytes_down_per_client_round": self._mean(self.down),
            "cipher_bytes_up": self._mean(self.cipher_up),
            "cipher_bytes_down": self._mean(self.cipher_down),
            "negotiation_bytes": float(self.negotiation),
            "setup_bytes": float(self.setup),
        }
