"""Full homomorphic encryption of every LoRA value a client uploads (CKKS, she_lora.ckks).

The server holds only the public context (no secret key, no public key): it can add and scale
ciphertexts, never decrypt or encrypt. All clients share one secret key (the usual single-key FL
threat model: honest-but-curious server, no client-server collusion).

Exact heterogeneous-rank aggregation (FlexLoRA: sum_i w_i s_i B_i A_i) is not reachable by adding
encrypted factors, so two exact designs are offered:

- ``stack`` (default): each client encrypts its own B_i and A_i; the server concatenates the
  ciphertexts of the round (no arithmetic) and broadcasts them with the public sample counts, ranks
  and scalings; every client decrypts all of them and forms the exact aggregate of the stacked
  factors (``svd_of_product``). Bytes grow with (m + n) * r_i per module, fine at 3B-model scale.
- ``lift``: each client encrypts its dense delta s_i B_i A_i (m * n values per module); the server
  multiplies each ciphertext by the plaintext weight n_i / sum n (sample counts are public metadata)
  and adds them. Genuine homomorphic aggregation, exact, but m * n values per module per client: only
  for small models (``lift_max_values`` guards against a 3200 x 3200 lift of ~10^9 values).

``packing`` decides how the values become ciphertexts: ``dense`` fills every ciphertext (the honest
baseline); ``per_column`` spends one ciphertext per column of A and per row of B (r values each; for
``lift`` one per column of the delta), the accounting behind SHE-LoRA's full-HE reference numbers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from benchmark.contract import (
    AttackerView,
    ClientInfo,
    ClientRole,
    ClientUpdate,
    Defense,
    FederationInfo,
    LoRAFactors,
    ServerRole,
    WirePayload,
)
from defenses.common import ckks_field, client_keys, fedavg_weights, finalize_to_rank, update_meta
from she_lora import ckks
from she_lora.lowrank import FactoredDelta, aggregate_lowrank

PACKINGS = ("dense", "per_column")
AGGREGATIONS = ("stack", "lift")


@dataclass(frozen=True)
class FullHEParams:
    """CKKS parameters, packing and the exact aggregation design of full HE."""

    packing: str = field(default="dense", metadata={
        "help": "dense (fill every ciphertext) | per_column (one ciphertext per A column / B row)"})
    aggregation: str = field(default="stack", metadata={
        "help": "stack (the server relays the clients' ciphertexts) | lift (the server adds weighted dense deltas)"})
    poly_modulus_degree: int = ckks_field("poly_modulus_degree", 8192)
    coeff_mod_bit_sizes: tuple[int, ...] = ckks_field("coeff_mod_bit_sizes", (60, 40, 40, 60))
    scale_bits: int = ckks_field("scale_bits", 40)
    n_workers: int = field(default=1, metadata={
        "help": "processes for dense encryption of many ciphertexts (>= 1)"})
    lift_max_values: int = field(default=50_000_000, metadata={
        "help": "refuse a lift that would encrypt more values per client than this (>= 1)"})

    def __post_init__(self) -> None:
        if self.packing not in PACKINGS:
            raise ValueError(f"full_he.packing must be one of {', '.join(PACKINGS)}, got {self.packing!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"full_he.aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.n_workers < 1:
            raise ValueError(f"full_he.n_workers must be >= 1, got {self.n_workers}")
        if self.lift_max_values < 1:
            raise ValueError(f"full_he.lift_max_values must be >= 1, got {self.lift_max_values}")
        self.ckks()  # CKKSParams checks the chain, scale and security bound (one-line errors)

    def ckks(self) -> ckks.CKKSParams:
        return ckks.CKKSParams(self.poly_modulus_degree, tuple(self.coeff_mod_bit_sizes), self.scale_bits)


# ---- packing helpers (shared with maskcrypt) -------------------------------------------------


def chunk_lengths(segments: Sequence[int], packing: str, capacity: int) -> list[int]:
    """How many values each ciphertext holds: dense fills ciphertexts across segment boundaries,
    per_column starts a ciphertext at every segment (splitting a segment longer than one)."""
    if packing == "dense":
        total = int(sum(segments))
        return [min(capacity, total - s) for s in range(0, total, capacity)]
    out: list[int] = []
    for seg in segments:
        out += [min(capacity, seg - s) for s in range(0, seg, capacity)]
    return out


def encrypt_chunks(ctx: Any, flat: np.ndarray, lengths: Sequence[int], n_workers: int = 1) -> list[bytes]:
    """Encrypt ``flat`` cut into ``lengths`` (one ciphertext each)."""
    if not lengths:
        return []
    cap = ckks.slots(ctx)
    if all(n == cap for n in lengths[:-1]):  # dense: one packed call (parallel if asked)
        return ckks.encrypt_packed(ctx, flat, n_workers=n_workers)
    bounds = np.cumsum([0, *lengths])
    return [ckks.encrypt_packed(ctx, flat[a:b])[0] for a, b in zip(bounds[:-1], bounds[1:])]


def decrypt_chunks(ctx: Any, blobs: Sequence[bytes], lengths: Sequence[int]) -> np.ndarray:
    if len(blobs) != len(lengths):
        raise ValueError(f"decrypt: {len(blobs)} ciphertexts for {len(lengths)} chunks")
    if not blobs:
        return np.zeros(0)
    return np.concatenate([ckks.decrypt_packed(ctx, [b], n) for b, n in zip(blobs, lengths)])


def factor_segments(shapes: Sequence[tuple[int, int, int]]) -> list[int]:
    """Segments of the stacked layout: per module (m, n, r), m rows of B then n columns of A (r each)."""
    out: list[int] = []
    for m, n, r in shapes:
        out += [r] * (m + n)
    return out


def flatten_factors(factors: Mapping[str, LoRAFactors], names: Sequence[str]) -> np.ndarray:
    """Per module: B row by row, then A column by column (the per_column segments in order)."""
    parts = []
    for name in names:
        f = factors[name]
        parts += [f.B.detach().double().cpu().reshape(-1), f.A.detach().double().cpu().T.reshape(-1)]
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def unflatten_factors(flat: np.ndarray, layout: Sequence[Sequence[Any]], scale: float) -> dict[str, LoRAFactors]:
    """Inverse of ``flatten_factors`` for a layout of (name, m, n, r) rows."""
    out, pos = {}, 0
    values = torch.from_numpy(np.asarray(flat, dtype=np.float64)).float()
    for name, m, n, r in layout:
        B = values[pos : pos + m * r].reshape(m, r)
        pos += m * r
        A = values[pos : pos + n * r].reshape(n, r).T.contiguous()
        pos += n * r
        out[name] = LoRAFactors(A, B.contiguous(), scale)
    return out


def block_exponents(flat: np.ndarray, blocks: Sequence[int]) -> list[int]:
    """The power-of-two exponent of each consecutive block's largest |value| (``ckks.exponent_of``):
    sent in the clear, it reveals magnitudes to within a factor of two and nothing finer."""
    bounds = np.cumsum([0, *blocks])
    return [ckks.exponent_of(flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _shape(f: LoRAFactors) -> tuple[int, int]:
    return int(f.B.shape[0]), int(f.A.shape[1])


def cipher_view(name: str, payload: WirePayload, note: str = "ciphertext only") -> AttackerView:
    """What the server holds of an all-encrypted upload: sizes and public metadata, no plaintext."""
    meta = payload.meta
    return AttackerView(
        defense=name,
        kind=meta.get("kind", "weights"),
        modules={},
        leaked={k: meta[k] for k in ("rank", "n_samples") if k in meta},
        cipher_bytes=payload.cipher_bytes(),
        note=note,
    )


class FullHEClient(ClientRole):
    """Holds the clients' shared secret context; encrypts every value; decrypts and aggregates."""

    def __init__(self, params: FullHEParams) -> None:
        self.params = params
        self.fed: FederationInfo | None = None
        self._client_ctx: Any = None  # shared by the clients: holds the secret key
        self._costs: dict[str, float] = {}
        self._cache: tuple[WirePayload, dict[str, FactoredDelta]] | None = None

    def setup(self, fed: FederationInfo) -> WirePayload:
        self.fed = fed
        self._client_ctx, public, self._costs = client_keys(self.params.ckks())
        return WirePayload("clients", cipher={"public_context": public}, meta={"kind": "setup"})

    def setup_costs(self) -> dict[str, float]:
        return dict(self._costs)

    def protect(self, update: ClientUpdate) -> WirePayload:
        ctx, p = self._client_ctx, self.params
        names = sorted(update.factors)
        t0 = time.perf_counter()
        if p.aggregation == "stack":
            layout = [[n, *_shape(update.factors[n]), update.factors[n].rank] for n in names]
            flat = flatten_factors(update.factors, names)
            segments = factor_segments([tuple(row[1:]) for row in layout])
        else:
            layout = [[n, *_shape(update.factors[n])] for n in names]
            total = sum(m * n for _, m, n in layout)
            if total > p.lift_max_values:
                raise ValueError(
                    f"full_he: a lift encrypts {total} values per client (> lift_max_values={p.lift_max_values}); "
                    "use aggregation='stack'"
                )
            flat = np.concatenate([update.factors[n].delta().detach().double().cpu().T.reshape(-1).numpy() for n in names])
            segments = [m for _, m, n in layout for _ in range(n)]  # one segment per column of the delta
        # slots in [-1, 1], so CKKS's absolute noise is relative to each block's size: stack scales each
        # module's B and A by their own power of two, lift each client's whole delta (the server adds them)
        blocks = [len(flat)] if p.aggregation == "lift" else [m * r if i % 2 == 0 else n * r
                                                               for _, m, n, r in layout for i in range(2)]
        exponents = block_exponents(flat, blocks)
        scaled = np.ldexp(flat, -np.repeat(exponents, blocks))
        blobs = encrypt_chunks(ctx, scaled, chunk_lengths(segments, p.packing, ckks.slots(ctx)), p.n_workers)
        enc_s = time.perf_counter() - t0
        meta = {**update_meta(update), "layout": layout, "packing": p.packing, "aggregation": p.aggregation,
                "exponent": exponents[0] if p.aggregation == "lift" else exponents}
        return WirePayload(
            sender=f"client:{update.client.client_id}", cipher={"values": blobs}, meta=meta, timings={"enc_s": enc_s}
        )

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        deltas = self._decrypted(message)
        return finalize_to_rank(deltas, client, self.fed.seed if self.fed else 0)

    def _decrypted(self, message: WirePayload) -> dict[str, FactoredDelta]:
        """The broadcast decrypted once per message object (the engine hands each receiver its own
        copy, so each receiver's decryption is measured)."""
        if self._cache is not None and self._cache[0] is message:
            return self._cache[1]
        deltas = self._decrypt_stack(message) if message.meta["aggregation"] == "stack" else self._decrypt_lift(message)
        self._cache = (message, deltas)
        return deltas

    def _decrypt_stack(self, message: WirePayload) -> dict[str, FactoredDelta]:
        ctx, cap = self._client_ctx, ckks.slots(self._client_ctx)
        clients, layouts = message.meta["clients"], message.meta["layouts"]
        total = sum(float(c["n_samples"]) for c in clients)
        per_client = []
        for i, (c, layout) in enumerate(zip(clients, layouts)):
            lengths = chunk_lengths(factor_segments([tuple(row[1:]) for row in layout]), message.meta["packing"], cap)
            blocks = [m * r if j % 2 == 0 else n * r for _, m, n, r in layout for j in range(2)]
            flat = np.ldexp(decrypt_chunks(ctx, message.cipher[f"client{i}"], lengths), np.repeat(c["exponent"], blocks))
            per_client.append((float(c["n_samples"]) / total * float(c["scale"]), unflatten_factors(flat, layout, c["scale"])))
        names = [row[0] for row in layouts[0]]
        return {n: aggregate_lowrank([(w, f[n].B, f[n].A) for w, f in per_client]) for n in names}

    def _decrypt_lift(self, message: WirePayload) -> dict[str, FactoredDelta]:
        ctx = self._client_ctx
        layout = message.meta["layout"]
        segments = [m for _, m, n in layout for _ in range(n)]
        flat = decrypt_chunks(ctx, message.cipher["delta"], chunk_lengths(segments, message.meta["packing"], ckks.slots(ctx)))
        flat = np.ldexp(flat, int(message.meta["exponent"]))
        out, pos = {}, 0
        for name, m, n in layout:
            dense = torch.from_numpy(flat[pos : pos + m * n].copy()).reshape(n, m).T
            pos += m * n
            u, s, vh = torch.linalg.svd(dense, full_matrices=False)
            out[name] = FactoredDelta(u.float(), s.float(), vh.float())
        return out


class FullHEServer(ServerRole):
    """Relays or adds ciphertexts with the public context only: it reads nothing of any update and
    cannot replay a client's start."""

    name: ClassVar[str] = "full_he"

    def __init__(self, params: FullHEParams) -> None:
        self.params = params
        self._server_ctx: Any = None  # loaded from the public bytes only

    def setup(self, fed: FederationInfo, hello: Sequence[WirePayload]) -> None:
        super().setup(fed, hello)
        self._server_ctx = ckks.load_public_context(hello[0].cipher["public_context"])

    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload:
        t0 = time.perf_counter()
        weights = fedavg_weights(payloads)
        clients = [{k: p.meta[k] for k in ("client_id", "rank", "scale", "n_samples", "exponent")} for p in payloads]
        meta: dict[str, Any] = {"aggregation": self.params.aggregation, "packing": self.params.packing}
        if self.params.aggregation == "stack":
            cipher = {f"client{i}": list(p.cipher["values"]) for i, p in enumerate(payloads)}
            meta.update(clients=clients, layouts=[p.meta["layout"] for p in payloads])
        else:
            srv = self._server_ctx
            # each upload holds values * 2^-e_i; the sum is kept in units of 2^E with |sum| <= 1
            exps = [int(p.meta["exponent"]) for p in payloads]
            E = ckks.exponent_of(np.array([sum(w * 2.0**e for w, e in zip(weights, exps))]))
            scaled = [ckks.mul_scalar_packed(srv, p.cipher["values"], w * 2.0 ** (e - E))
                      for p, w, e in zip(payloads, weights, exps)]
            cipher = {"delta": ckks.add_packed(srv, scaled)}
            meta.update(layout=payloads[0].meta["layout"], clients=[c["client_id"] for c in clients], exponent=E)
        return WirePayload(sender="server", cipher=cipher, meta=meta, timings={"agg_s": time.perf_counter() - t0})

    def observe(self, payload: WirePayload) -> AttackerView:
        return cipher_view(self.name, payload)

    def privacy_params(self) -> dict[str, Any]:
        p = self.params
        return {
            "encrypted_fraction": 1.0,
            "packing": p.packing,
            "aggregation": p.aggregation,
            "ckks_poly_modulus_degree": p.poly_modulus_degree,
            "ckks_scale_bits": p.scale_bits,
        }


class FullHE(Defense):
    """Every uploaded LoRA value is CKKS-encrypted; the server aggregates with a public context only.

    See the module docstring for the ``stack`` and ``lift`` aggregations and the two packings. Both
    aggregations equal the plaintext FlexLoRA aggregate up to CKKS error (~1e-9 relative).
    """

    name: ClassVar[str] = "full_he"
    version: ClassVar[str] = "2"
    Params = FullHEParams
    Client = FullHEClient
    Server = FullHEServer
    encrypts: ClassVar[str] = "all"

    def paper_method(self) -> str | None:
        return "full HE"

    def cost_role(self) -> str | None:
        """The paper's full-HE reference relays ciphertexts (``stack``); ``lift`` encrypts dense m x n
        deltas, which the paper does not compare."""
        return f"full_he_{self.params.packing}" if self.params.aggregation == "stack" else None
