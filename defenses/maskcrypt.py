"""MaskCrypt-style selective HE of individual LoRA weights, at the tiers' encryption budgets.

Coordinates are (module, factor, row, col) of each client's own-rank factors, keyed so that the same
key names the same coordinate in every rank (A row-major over n, B column-major over m). Per round:

1. Proposal (client): score every coordinate by |update| * |gradient| (``update.grads``; the update
   is the change from ``update.prev``), or randomly (``selection='random'``), and send the top-K_i
   keys in order. K_i = ceil(budget * coordinates) (``basis='all'``) or the number of values SHE-LoRA
   encrypts at that budget, r * ceil(budget * n) per module (``basis='she_lora'``).
2. Consensus (server): order the union of proposals by votes (then best proposal position, then key)
   and broadcast it. Client i hides the first K_i keys of that list which exist in its rank, so
   clients of a rank share nested hidden sets and no client's own scores are revealed.
3. Upload: hidden values CKKS-encrypted in one packed vector; the rest in plaintext (zeros at hidden
   positions; a fully hidden factor is not sent). Without a consensus for the round (e.g. the attack
   probe) a client hides its own proposal and sends its keys in plaintext.

Exact aggregation: B_i A_i needs the hidden values, so when anything is hidden the server relays the
plaintext factors and ciphertexts of all clients (stacking: concatenation, no arithmetic) and each
client decrypts and forms sum_i w_i s_i B_i A_i through ``svd_of_product``. When nothing is hidden the
server aggregates exactly as plain_lora, so budget 0 equals plain_lora bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from benchmark.contract import (
    AttackerView,
    ClientInfo,
    ClientRole,
    ClientUpdate,
    Defense,
    FederationInfo,
    LoRAFactors,
    ObservedModule,
    ServerRole,
    StartKnowledge,
    StartSpace,
    WirePayload,
)
from defenses.common import (
    broadcast,
    broadcast_rank,
    ckks_field,
    client_keys,
    decode_factors,
    encode_factors,
    fedavg_weights,
    finalize_to_rank,
    padding_rows,
    read_broadcast,
    span_rows,
    update_meta,
)
from defenses.dp import stream, update_delta
from she_lora import ckks
from she_lora.lowrank import FactoredDelta, aggregate_lowrank

STRIDE = 1 << 40  # key = (module_index * 2 + factor) * STRIDE + offset; factor 0 = A, 1 = B
SELECTIONS = ("grad", "random")
BASES = ("all", "she_lora")


@dataclass(frozen=True)
class MaskCryptParams:
    """Budget, selection rule and CKKS parameters of MaskCrypt."""

    budget: float | None = field(default=None, metadata={
        "help": "fraction of coordinates hidden for every client, in [0, 1]; unset: each client's tier budget"})
    basis: str = field(default="all", metadata={
        "help": "all: budget * all coordinates | she_lora: as many values as SHE-LoRA encrypts (r*ceil(budget*n))"})
    selection: str = field(default="grad", metadata={
        "help": "grad: top |update| * |gradient| | random: uniformly random coordinates"})
    poly_modulus_degree: int = ckks_field("poly_modulus_degree", 8192)
    coeff_mod_bit_sizes: tuple[int, ...] = ckks_field("coeff_mod_bit_sizes", (60, 40, 40, 60))
    scale_bits: int = ckks_field("scale_bits", 40)
    n_workers: int = field(default=1, metadata={
        "help": "processes for encrypting many ciphertexts (>= 1)"})

    def __post_init__(self) -> None:
        if self.budget is not None and not 0.0 <= self.budget <= 1.0:
            raise ValueError(f"maskcrypt.budget must be in [0, 1] (or unset: the tier budget), got {self.budget}")
        if self.basis not in BASES:
            raise ValueError(f"maskcrypt.basis must be one of {', '.join(BASES)}, got {self.basis!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"maskcrypt.selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.n_workers < 1:
            raise ValueError(f"maskcrypt.n_workers must be >= 1, got {self.n_workers}")
        self.ckks()

    def ckks(self) -> ckks.CKKSParams:
        return ckks.CKKSParams(self.poly_modulus_degree, tuple(self.coeff_mod_bit_sizes), self.scale_bits)


# ---- coordinates ----------------------------------------------------------------------------


def _ranges(names: Sequence[str], shapes: Mapping[str, tuple[int, int]], rank: int) -> list[tuple[int, int, str, int]]:
    """(base key, size, module, factor) of each factor of a rank-``rank`` client, in key order."""
    out = []
    for i, name in enumerate(names):
        m, n = shapes[name]
        out += [((2 * i) * STRIDE, rank * n, name, 0), ((2 * i + 1) * STRIDE, rank * m, name, 1)]
    return out


def flat_values(factors: Mapping[str, LoRAFactors], names: Sequence[str]) -> Tensor:
    """Values in key order: per module A row-major, then B column-major."""
    parts = []
    for name in names:
        f = factors[name]
        parts += [f.A.detach().reshape(-1), f.B.detach().T.reshape(-1)]
    return torch.cat(parts).double().cpu()


def all_keys(names: Sequence[str], shapes: Mapping[str, tuple[int, int]], rank: int) -> np.ndarray:
    return np.concatenate([base + np.arange(size, dtype=np.int64) for base, size, _, _ in _ranges(names, shapes, rank)])


def exists_in_rank(keys: np.ndarray, names: Sequence[str], shapes: Mapping[str, tuple[int, int]], rank: int) -> np.ndarray:
    """Which keys name a coordinate of a rank-``rank`` client (A row < rank, B column < rank)."""
    mf, off = keys // STRIDE, keys % STRIDE
    dims = np.array([shapes[n][1 - f] for n in names for f in (0, 1)], dtype=np.int64)  # A: n, B: m
    return off // dims[mf] < rank


def hidden_count(names: Sequence[str], shapes: Mapping[str, tuple[int, int]], rank: int, budget: float, basis: str) -> int:
    if budget <= 0:
        return 0
    if basis == "she_lora":
        return sum(rank * math.ceil(budget * shapes[n][1] - 1e-9) for n in names)
    total = sum(rank * (m + n) for m, n in (shapes[x] for x in names))
    return min(total, math.ceil(budget * total - 1e-9))


def consensus(proposals: Sequence[np.ndarray]) -> np.ndarray:
    """Union of ordered proposals, by votes (desc), best position in any proposal (asc), key."""
    votes: dict[int, int] = {}
    best: dict[int, int] = {}
    for prop in proposals:
        for pos, key in enumerate(prop.tolist()):
            votes[key] = votes.get(key, 0) + 1
            best[key] = min(best.get(key, pos), pos)
    order = sorted(votes, key=lambda k: (-votes[k], best[k], k))
    return np.asarray(order, dtype=np.int64)


def masks_from_keys(keys: np.ndarray, names: Sequence[str], shapes: Mapping[str, tuple[int, int]], rank: int) -> dict[str, list[Tensor]]:
    """Per module [A_hidden (r x n), B_hidden (m x r)] from hidden keys."""
    out = {}
    for i, name in enumerate(names):
        m, n = shapes[name]
        a = torch.zeros(rank * n, dtype=torch.bool)
        b = torch.zeros(rank * m, dtype=torch.bool)
        for flat, f in ((a, 0), (b, 1)):
            base = (2 * i + f) * STRIDE
            sel = keys[(keys >= base) & (keys < base + STRIDE)] - base
            flat[torch.from_numpy(sel)] = True
        out[name] = [a.reshape(rank, n), b.reshape(rank, m).T.contiguous()]
    return out


def _shapes_of(update: ClientUpdate) -> tuple[list[str], dict[str, tuple[int, int]]]:
    names = sorted(update.factors)
    return names, {n: (int(update.factors[n].B.shape[0]), int(update.factors[n].A.shape[1])) for n in names}


def payload_keys(payload: WirePayload, agreed: Mapping[int, np.ndarray]) -> np.ndarray:
    """The hidden keys of an upload, as the server (and every client) can tell them from the
    upload's metadata and the round's consensus list."""
    meta = payload.meta
    if meta["n_hidden"] == 0:
        return np.zeros(0, dtype=np.int64)
    if "hidden_keys" in payload.plain:
        return payload.plain["hidden_keys"].numpy()
    names = sorted(meta["shapes"])
    shapes = {n: tuple(meta["shapes"][n]) for n in names}
    mine = agreed[int(meta["round"])]
    mine = mine[exists_in_rank(mine, names, shapes, meta["rank"])]
    return np.sort(mine[: meta["n_hidden"]])


def visible(payload: WirePayload, agreed: Mapping[int, np.ndarray]) -> tuple[dict[str, LoRAFactors], dict[str, list[Tensor]]]:
    """Plaintext factors of an upload (zeros where hidden or not sent) and the hidden masks."""
    meta = payload.meta
    names = sorted(meta["shapes"])
    shapes = {n: tuple(meta["shapes"][n]) for n in names}
    r = meta["rank"]
    masks = masks_from_keys(payload_keys(payload, agreed), names, shapes, r)
    out = {}
    for n in names:
        m, k = shapes[n]
        A = payload.plain.get(f"{n}/A", torch.zeros(r, k))
        B = payload.plain.get(f"{n}/B", torch.zeros(m, r))
        out[n] = LoRAFactors(A.clone(), B.clone(), meta["scale"])
    return out, masks


def relayed(message: WirePayload) -> list[tuple[dict[str, Any], WirePayload]]:
    """Each client's part of a relay broadcast: (its public facts, its upload as relayed)."""
    out = []
    for i, c in enumerate(message.meta["clients"]):
        prefix = f"client{i}/"
        plain = {k[len(prefix):]: v for k, v in message.plain.items() if k.startswith(prefix)}
        out.append((c, WirePayload(sender="relay", plain=plain, meta=c)))
    return out


class MaskCryptClient(ClientRole):
    """Proposes its top coordinates, hides the agreed ones under CKKS, rebuilds the aggregate exactly."""

    def __init__(self, params: MaskCryptParams) -> None:
        self.params = params
        self.fed: FederationInfo | None = None
        self._client_ctx: Any = None
        self._costs: dict[str, float] = {}
        self._consensus: dict[int, np.ndarray] = {}  # round -> the server's ordered consensus (public)
        self._cache: tuple[WirePayload, dict[str, FactoredDelta]] | None = None

    def setup(self, fed: FederationInfo) -> WirePayload:
        self.fed = fed
        self._client_ctx, public, self._costs = client_keys(self.params.ckks())
        return WirePayload("clients", cipher={"public_context": public}, meta={"kind": "setup"})

    def setup_costs(self) -> dict[str, float]:
        return dict(self._costs)

    def budget(self, client: ClientInfo) -> float:
        return client.budget if self.params.budget is None else self.params.budget

    # -- step 1: proposal; the reply is the consensus -------------------------------------------
    def ranked(self, update: ClientUpdate) -> np.ndarray:
        """The client's top-K_i keys, most important first."""
        names, shapes = _shapes_of(update)
        rank = update.client.rank
        k = hidden_count(names, shapes, rank, self.budget(update.client), self.params.basis)
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        if self.params.selection == "random":
            seed = self.fed.seed if self.fed else 0
            gen = stream(seed, "maskcrypt", update.client.client_id, update.round, update.kind)
            score = torch.rand(len(all_keys(names, shapes, rank)), generator=gen, dtype=torch.float64)
        else:
            delta = flat_values(update_delta(update), names)
            grads = flat_values(update.grads, names) if update.grads is not None else delta
            score = delta.abs() * grads.abs()
        top = torch.topk(score, k, sorted=True).indices.numpy()
        return all_keys(names, shapes, rank)[top]

    def propose(self, update: ClientUpdate) -> WirePayload:
        return WirePayload(sender=f"client:{update.client.client_id}", plain={"proposal": torch.from_numpy(self.ranked(update))},
                           meta={"kind": "negotiation", "round": update.round, "client_id": update.client.client_id})

    def accept(self, reply: WirePayload) -> None:
        self._consensus[int(reply.meta["round"])] = reply.plain["consensus"].numpy()

    def _hidden_keys(self, update: ClientUpdate) -> tuple[np.ndarray, bool]:
        """Sorted hidden keys of this upload, and whether they follow the round's consensus."""
        names, shapes = _shapes_of(update)
        agreed = self._consensus.get(update.round) if update.kind == "weights" else None
        if agreed is None:
            return np.sort(self.ranked(update)), False
        k = hidden_count(names, shapes, update.client.rank, self.budget(update.client), self.params.basis)
        mine = agreed[exists_in_rank(agreed, names, shapes, update.client.rank)]
        return np.sort(mine[:k]), True

    # -- step 3: upload -------------------------------------------------------------------------
    def protect(self, update: ClientUpdate) -> WirePayload:
        names, shapes = _shapes_of(update)
        t0 = time.perf_counter()
        keys, agreed = self._hidden_keys(update)
        masks = masks_from_keys(keys, names, shapes, update.client.rank)
        plain = {}
        for k, t in encode_factors(update.factors).items():
            name, factor = k.rsplit("/", 1)
            hidden = masks[name][0 if factor == "A" else 1]
            if not bool(hidden.all()):
                plain[k] = t.masked_fill(hidden.to(t.device), 0.0)
        cipher: dict[str, bytes | list[bytes]] = {}
        timings, exponent = {}, {}
        if len(keys):
            values = flat_values(update.factors, names).numpy()
            index = np.searchsorted(all_keys(names, shapes, update.client.rank), keys)
            # slots in [-1, 1] per (module, factor) group: CKKS error relative to each group's size
            groups = keys // STRIDE
            exponent = {str(g): ckks.exponent_of(values[index][groups == g]) for g in np.unique(groups).tolist()}
            scaled = np.ldexp(values[index], -np.array([exponent[str(g)] for g in groups.tolist()]))
            cipher["hidden"] = ckks.encrypt_packed(self._client_ctx, scaled, n_workers=self.params.n_workers)
            timings["enc_s"] = time.perf_counter() - t0
            if not agreed:
                plain["hidden_keys"] = torch.from_numpy(keys)
        meta = {**update_meta(update), "n_hidden": len(keys), "mask": "consensus" if agreed else "own",
                "shapes": {n: list(shapes[n]) for n in names}, "exponent": exponent}
        return WirePayload(sender=f"client:{update.client.client_id}", plain=plain, cipher=cipher, meta=meta, timings=timings)

    # -- step 5: every client rebuilds the exact aggregate ----------------------------------------
    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        seed = self.fed.seed if self.fed else 0
        if "clients" not in message.meta:
            return finalize_to_rank(read_broadcast(message), client, seed)
        if self._cache is None or self._cache[0] is not message:
            self._cache = (message, rebuild(message, self._consensus, self._client_ctx))
        return finalize_to_rank(self._cache[1], client, seed)


def rebuild(message: WirePayload, agreed: Mapping[int, np.ndarray], ctx: Any | None) -> dict[str, FactoredDelta]:
    """The aggregate from a relay broadcast: exact with the secret context, hidden values taken as
    zero without it (the server's best estimate)."""
    clients = message.meta["clients"]
    total = sum(float(c["n_samples"]) for c in clients)
    terms: dict[str, list[tuple[float, Tensor, Tensor]]] = {}
    for i, (c, own) in enumerate(relayed(message)):
        factors, _ = visible(own, agreed)
        if c["n_hidden"] and ctx is not None:
            names = sorted(c["shapes"])
            shapes = {n: tuple(c["shapes"][n]) for n in names}
            values = flat_values(factors, names).numpy()
            keys = payload_keys(own, agreed)
            index = np.searchsorted(all_keys(names, shapes, c["rank"]), keys)
            exps = np.array([int(c["exponent"][str(g)]) for g in (keys // STRIDE).tolist()])
            values[index] = np.ldexp(ckks.decrypt_packed(ctx, message.cipher[f"client{i}"], c["n_hidden"]), exps)
            factors = _unflat(values, names, shapes, c["rank"], c["scale"])
        w = float(c["n_samples"]) / total * float(c["scale"])
        for n, f in factors.items():
            terms.setdefault(n, []).append((w, f.B, f.A))
    return {n: aggregate_lowrank(t) for n, t in terms.items()}


class MaskCryptServer(ServerRole):
    """Orders the proposals into a consensus, relays plaintext parts and ciphertexts (or plain
    FlexLoRA when nothing is hidden); knows a client's start only up to the hidden values."""

    name: ClassVar[str] = "maskcrypt"

    def __init__(self, params: MaskCryptParams) -> None:
        self.params = params
        self._consensus: dict[int, np.ndarray] = {}

    def setup(self, fed: FederationInfo, hello: Sequence[WirePayload]) -> None:
        super().setup(fed, hello)
        ckks.load_public_context(hello[0].cipher["public_context"])  # checks the clients' parameters

    def negotiate(self, proposals: Sequence[WirePayload]) -> WirePayload | None:
        if not proposals:
            return None
        rnd = int(proposals[0].meta["round"])
        self._consensus[rnd] = consensus([p.plain["proposal"].numpy() for p in proposals])
        return WirePayload(sender="server", plain={"consensus": torch.from_numpy(self._consensus[rnd])},
                           meta={"kind": "negotiation", "round": rnd})

    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload:
        t0 = time.perf_counter()
        weights = fedavg_weights(payloads)
        if all(p.meta["n_hidden"] == 0 for p in payloads):  # nothing hidden: plain FlexLoRA
            per_client = [decode_factors(p.plain, p.meta["scale"]) for p in payloads]
            rank = broadcast_rank(self.fed)
            deltas = {
                name: aggregate_lowrank([(w * f[name].scale, f[name].B, f[name].A) for w, f in zip(weights, per_client)],
                                        rank=rank)
                for name in per_client[0]
            }
            message = broadcast(deltas, rank)
        else:  # relay plaintext parts and ciphertexts: clients rebuild every factor exactly
            plain, cipher = {}, {}
            for i, p in enumerate(payloads):
                plain.update({f"client{i}/{k}": v for k, v in p.plain.items()})
                if "hidden" in p.cipher:
                    cipher[f"client{i}"] = list(p.cipher["hidden"])
            keep = ("client_id", "rank", "scale", "n_samples", "n_hidden", "round", "mask", "shapes", "exponent")
            message = WirePayload(sender="server", plain=plain, cipher=cipher,
                                  meta={"rank": broadcast_rank(self.fed), "clients": [{k: p.meta[k] for k in keep} for p in payloads]})
        message.timings["agg_s"] = time.perf_counter() - t0
        return message

    def observe(self, payload: WirePayload) -> AttackerView:
        factors, masks = visible(payload, self._consensus)
        modules = {}
        for n, f in factors.items():
            a_hidden, b_hidden = masks[n]
            modules[n] = ObservedModule(
                A=None if bool(a_hidden.all()) else f.A.clone(),
                B=None if bool(b_hidden.all()) else f.B.clone(),
                scale=f.scale,
                A_hidden=a_hidden.clone(),
                B_hidden=b_hidden.clone(),
            )
        return AttackerView(
            defense=self.name,
            kind=payload.meta.get("kind", "weights"),
            modules=modules,
            leaked={"n_hidden": payload.meta["n_hidden"], "mask": payload.meta["mask"]},
            cipher_bytes=payload.cipher_bytes(),
            note="maskcrypt: hidden coordinates are zero in A/B and marked in A_hidden/B_hidden",
        )

    def known_start(self, broadcast: WirePayload, client: ClientInfo) -> StartKnowledge:
        """Exact when nothing was hidden; otherwise finalize replayed with the hidden values as zero.

        What is exact even then (``StartSpace``): the aggregate is sum_i w_i s_i B_i A_i, so its rows
        lie in the span of every relayed A_i's visible rows plus the unit vectors of the columns where
        any A_i had a hidden entry, and its columns in the span of every B_i's visible columns plus
        the unit vectors of the rows where any B_i had one. The client's start takes its rows and
        columns from that aggregate; its padding rows (public seed, no permutation) are replayed
        exactly."""
        seed = self.fed.seed if self.fed else 0
        if "clients" not in broadcast.meta:
            return StartKnowledge(finalize_to_rank(read_broadcast(broadcast), client, seed), "exact",
                                  "nothing was hidden: replayed the client's finalize")
        deltas = rebuild(broadcast, self._consensus, None)
        estimate = finalize_to_rank(deltas, client, seed)
        a_rows: dict[str, list[Tensor]] = {}
        b_cols: dict[str, list[Tensor]] = {}
        a_free: dict[str, set[int]] = {}
        b_free: dict[str, set[int]] = {}
        for _, own in relayed(broadcast):
            factors, masks = visible(own, self._consensus)
            for n, f in factors.items():
                a_hidden, b_hidden = masks[n]
                a_rows.setdefault(n, []).append(f.A)
                b_cols.setdefault(n, []).append(f.B.T)
                a_free.setdefault(n, set()).update(torch.nonzero(a_hidden.any(0)).flatten().tolist())
                b_free.setdefault(n, set()).update(torch.nonzero(b_hidden.any(1)).flatten().tolist())
        spaces = {}
        for n, f in estimate.items():
            pad = f.A[client.rank - padding_rows(deltas[n], client.rank):]
            spaces[n] = StartSpace(span_rows(a_rows[n] + [pad]), tuple(sorted(a_free[n])),
                                   b_cols=span_rows(b_cols[n]).T.contiguous(), b_free=tuple(sorted(b_free[n])))
        return StartKnowledge(estimate, "estimate", "replayed finalize with the hidden values taken as zero", spaces)

    def privacy_params(self) -> dict[str, Any]:
        """``encrypted_fraction``: mean over clients of hidden / all coordinates of their LoRA."""
        p = self.params
        out: dict[str, Any] = {"selection": p.selection, "basis": p.basis, "ckks_scale_bits": p.scale_bits}
        if self.fed and self.fed.module_shapes:
            names, shapes = sorted(self.fed.module_shapes), self.fed.module_shapes
            fractions = [
                hidden_count(names, shapes, c.rank, c.budget if p.budget is None else p.budget, p.basis)
                / sum(c.rank * (m + n) for m, n in shapes.values())
                for c in self.fed.clients
            ]
            out["encrypted_fraction"] = sum(fractions) / len(fractions)
        return out


class MaskCrypt(Defense):
    """Selective HE of the most important individual LoRA weights, agreed by mask consensus.

    See the module docstring for the protocol and the exact (stacked) aggregation.
    """

    name: ClassVar[str] = "maskcrypt"
    version: ClassVar[str] = "2"
    Params = MaskCryptParams
    Client = MaskCryptClient
    Server = MaskCryptServer
    encrypts: ClassVar[str] = "selective"

    def applied_budget(self, tier: ClientInfo) -> float | None:
        return tier.budget if self.params.budget is None else self.params.budget

    def paper_method(self) -> str | None:
        return "MaskCrypt (same HE cost)"

    def cost_role(self) -> str | None:
        return "maskcrypt"


def _unflat(values: np.ndarray, names: Sequence[str], shapes: Mapping[str, tuple[int, int]], rank: int, scale: float) -> dict[str, LoRAFactors]:
    """Inverse of ``flat_values`` for a rank-``rank`` client."""
    out, pos = {}, 0
    t = torch.from_numpy(values).float()
    for name in names:
        m, n = shapes[name]
        A = t[pos : pos + rank * n].reshape(rank, n)
        pos += rank * n
        B = t[pos : pos + rank * m].reshape(rank, m).T
        pos += rank * m
        out[name] = LoRAFactors(A.contiguous(), B.contiguous(), scale)
    return out
