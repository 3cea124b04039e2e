"""Encoding helpers shared by defenses: LoRA factors <-> plaintext wire tensors, FlexLoRA weights,
and the broadcast of a factored aggregate that each client truncates to its own rank."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from typing import Any

import torch
from torch import Tensor

from benchmark.contract import ClientInfo, ClientUpdate, FederationInfo, LoRAFactors, WirePayload
from she_lora import ckks
from she_lora.lowrank import FactoredDelta, to_lora


def update_meta(update: ClientUpdate) -> dict:
    """Public facts every upload carries: who, rank, scaling, sample count, what was observed."""
    return {
        "client_id": update.client.client_id,
        "rank": update.client.rank,
        "scale": update.client.scale,
        "n_samples": update.n_samples,
        "kind": update.kind,
        "round": update.round,
    }


def encode_factors(factors: Mapping[str, LoRAFactors]) -> dict[str, Tensor]:
    """Plaintext wire tensors ``<module>/A`` and ``<module>/B`` (cloned: the wire owns its copy)."""
    out: dict[str, Tensor] = {}
    for name, f in factors.items():
        out[f"{name}/A"] = f.A.detach().clone()
        out[f"{name}/B"] = f.B.detach().clone()
    return out


def decode_factors(plain: Mapping[str, Tensor], scale: float) -> dict[str, LoRAFactors]:
    modules = sorted({k.rsplit("/", 1)[0] for k in plain if k.endswith("/A")})
    return {m: LoRAFactors(plain[f"{m}/A"], plain[f"{m}/B"], scale) for m in modules}


def fedavg_weights(payloads: Sequence[WirePayload]) -> list[float]:
    """FlexLoRA's weights: each client's share of the round's samples."""
    counts = [float(p.meta["n_samples"]) for p in payloads]
    total = sum(counts)
    if total <= 0:
        raise ValueError("aggregate: payloads report no samples")
    return [c / total for c in counts]


def broadcast_rank(fed: FederationInfo | None) -> int:
    """FlexLoRA broadcasts the aggregate at the largest client rank: every smaller rank is a prefix."""
    return max(c.rank for c in fed.clients) if fed else 64


def broadcast(deltas: Mapping[str, FactoredDelta], rank: int, *, sender: str = "server") -> WirePayload:
    """Send the aggregate truncated at ``rank`` (the largest client rank): smaller ranks are its prefixes."""
    plain: dict[str, Tensor] = {}
    for name, d in deltas.items():
        t = d.truncate(rank)
        plain[f"{name}/US"] = (t.U * t.S).contiguous()
        plain[f"{name}/Vh"] = t.Vh.contiguous()
    return WirePayload(sender=sender, plain=plain, meta={"rank": rank})


def read_broadcast(message: WirePayload) -> dict[str, FactoredDelta]:
    """Recover the factored aggregate from ``broadcast``'s message (columns of US have norms S)."""
    out: dict[str, FactoredDelta] = {}
    for key in message.plain:
        if not key.endswith("/US"):
            continue
        name = key[: -len("/US")]
        us = message.plain[key]
        s = torch.linalg.norm(us, dim=0)
        u = us / s.clamp_min(1e-30)
        out[name] = FactoredDelta(u, s, message.plain[f"{name}/Vh"])
    return out


def finalize_to_rank(deltas: Mapping[str, FactoredDelta], client: ClientInfo, seed: int = 0,
                     place: Mapping[str, Callable[[Tensor], Tensor]] | None = None) -> dict[str, LoRAFactors]:
    """Each client's own-rank LoRA from the aggregate, with its alpha/r scaling divided out.

    Padding rows (an aggregate of lower rank than the client's) come from a stream of the public
    federation seed and the client id, so this is a deterministic function of public inputs and the
    server can replay it for any broadcast it can read. ``place[name]`` maps a module's padding
    rows, drawn in the column order the server observes, to the order the factors use (default: the
    same order).

    The rule every defense follows: padding a server can replay must teach it nothing secret. One
    SGD step never moves a padding row (its B column is zero), so a server that replays padding in
    the client's original column order and matches it against an upload in a secret order recovers
    that order column by column. Drawing the rows in the observed order closes this at no learning
    cost (an i.i.d. Gaussian block is the same distribution in any order) and keeps the start
    replayable, so plain LoRA and MaskCrypt, which permute nothing, keep their exact (or exactly
    bounded) start; a client-private stream would also close it, but would turn every defense's start
    into an estimate for no gain. SHE-LoRA applies it with its shared permutation (``padding``).

    What the methods' authors do: the FlexLoRA paper redistributes the aggregate by truncated SVD and
    does not say how a client whose rank exceeds the aggregate's fills the rest (its public code
    could not be read from here); the public SHE-LoRA code pads nothing, it slices the fused SVD to
    the top rank, so such a client's A has fewer rows than its rank. Random rows, as a fresh LoRA
    has, keep those directions trainable."""
    gen = torch.Generator().manual_seed(seed * 100_003 + client.client_id)
    out: dict[str, LoRAFactors] = {}
    for name, d in deltas.items():
        A, B = to_lora(d, client.rank, client.scale, generator=gen, place=(place or {}).get(name))
        out[name] = LoRAFactors(A, B, client.scale)
    return out


def padding_rows(delta: FactoredDelta, rank: int) -> int:
    """How many rows of a rank-``rank`` client's A ``to_lora`` pads (they are its last rows)."""
    return max(0, rank - min(rank, delta.rank))


def with_rank(delta: FactoredDelta, rank: int) -> FactoredDelta:
    """``delta`` with zero singular directions appended up to ``rank`` components: an estimate of an
    aggregate whose hidden part would have given it that many, so that ``finalize_to_rank`` pads as
    many rows as the client did (and draws its padding stream in step with the client's)."""
    extra = rank - delta.rank
    if extra <= 0:
        return delta
    U, S, Vh = delta.U, delta.S, delta.Vh
    return FactoredDelta(torch.cat([U, U.new_zeros(U.shape[0], extra)], 1), torch.cat([S, S.new_zeros(extra)]),
                         torch.cat([Vh, Vh.new_zeros(extra, Vh.shape[1])], 0))


def span_rows(parts: Sequence[Tensor]) -> Tensor:
    """The rows of ``parts`` stacked in float32 (a ``StartSpace`` generator set; empty parts skipped)."""
    kept = [p.detach().float().cpu() for p in parts if p.numel()]
    if not kept:
        raise ValueError("span_rows: nothing to stack")
    return torch.cat(kept, 0).contiguous()


def client_keys(params: ckks.CKKSParams) -> tuple[Any, bytes, dict[str, float]]:
    """The clients' shared secret context, the public bytes the server gets, and setup costs."""
    t0 = time.perf_counter()
    secret = ckks.make_secret_context(params)
    keygen_s = time.perf_counter() - t0
    public = ckks.public_context_bytes(secret)
    costs = {"keygen_s": keygen_s, "context_public_bytes": float(len(public)),
             "context_secret_bytes": float(len(ckks.secret_context_bytes(secret)))}
    return secret, public, costs


# The CKKS parameters full HE and MaskCrypt both take, with one meaning and range each.
CKKS_HELP = {
    "poly_modulus_degree": "CKKS ring dimension N, one of 4096, 8192, 16384, 32768; a ciphertext holds N real values "
                           "(two per complex slot)",
    "coeff_mod_bit_sizes": "CKKS prime chain: >= 2 primes of 20-60 bits, middle ones equal to scale_bits, sum within "
                           "N's 128-bit security bound",
    "scale_bits": "CKKS scale 2^scale_bits, in [30, 59] and >= 10 bits below the first prime",
}


def ckks_field(name: str, default: Any) -> Any:
    """A ``Params`` field for CKKS parameter ``name``, with its shared help."""
    return field(default=default, metadata={"help": CKKS_HELP[name]})
