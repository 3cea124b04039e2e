"""SHE-LoRA: selective CKKS encryption of the most sensitive LoRA-A columns, negotiated per module.

The method lives in the ``she_lora`` library; this adapter maps it onto the harness contracts and
keeps the two roles apart: ``self._clients`` (``she_lora.client.ClientSide``) holds the secret CKKS
key and the OPE key and is used only by ``negotiate``'s client half, ``protect`` and ``finalize``;
``self._server`` (``she_lora.server.ServerSide``) is built from the public context bytes alone and is
the only thing ``aggregate`` and ``observe`` touch.

Round flow: ``negotiate(updates)`` (client top-k lists -> ordered global list per module, plus the
round's sample total) -> ``protect`` per client -> ``aggregate`` -> ``finalize`` per client.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from benchmark.api import (
    AttackerView,
    ClientInfo,
    ClientUpdate,
    FederationInfo,
    LoRAFactors,
    ObservedModule,
    WirePayload,
)
from defenses.common import finalize_to_rank, update_meta
from she_lora import ckks
from she_lora.client import ClientSide
from she_lora.negotiation import DEFAULT_SHARES
from she_lora.plan import LEAKAGES, LIFTS, Member, Plan, ProtocolConfig
from she_lora.reparam import thin_linalg
from she_lora.server import ServerSide


@dataclass(frozen=True)
class SHELoRAParams:
    """SHE-LoRA's knobs.

    lift: ``client_lift`` (default: clients encrypt w s B a per selected column; the server only adds,
    so a lean context without Galois keys and exact sums) or ``server_lift`` (the paper: clients
    encrypt the r-vectors a, the server multiplies by its plaintext B; ~m/r times smaller uploads, a
    17 MB+ Galois key set and much more server time). leakage: ``ope`` (keyed order-preserving codes)
    or ``plain`` (column indices in the clear). swap: the shared column permutation. sensitivity_refresh:
    0 negotiates once (the paper), R > 0 renegotiates every R rounds. budget_scale multiplies every
    tier's budget. send_scores sends sensitivity scores with the lists. CKKS: ``coeff_mod_bit_sizes=()``
    and ``scale_bits=0`` pick per lift mode, (60, 60) at 2^50 for client_lift, (60, 40, 40, 60) at 2^40
    for server_lift. shares: (tier, Common, Sensitivity) shares of each budget increment.
    """

    lift: str = "client_lift"
    leakage: str = "ope"
    swap: bool = True
    sensitivity_refresh: int = 0
    budget_scale: float = 1.0
    send_scores: bool = False
    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = ()
    scale_bits: int = 0
    n_workers: int = 1
    shares: tuple[float, ...] = DEFAULT_SHARES

    def __post_init__(self) -> None:
        if self.lift not in LIFTS:
            raise ValueError(f"she_lora.lift must be one of {', '.join(LIFTS)}, got {self.lift!r}")
        if self.leakage not in LEAKAGES:
            raise ValueError(f"she_lora.leakage must be one of {', '.join(LEAKAGES)}, got {self.leakage!r}")
        if not 0.0 < self.budget_scale <= 1.0:
            raise ValueError(f"she_lora.budget_scale must be in (0, 1], got {self.budget_scale}")
        if self.sensitivity_refresh < 0:
            raise ValueError(f"she_lora.sensitivity_refresh must be >= 0, got {self.sensitivity_refresh}")
        if len(self.shares) != 3:
            raise ValueError(f"she_lora.shares needs 3 numbers (tier, common, sensitivity), got {self.shares}")
        self.protocol()  # validates the CKKS parameters and the combination

    def protocol(self) -> ProtocolConfig:
        server = self.lift == "server_lift"
        bits = self.coeff_mod_bit_sizes or ((60, 40, 40, 60) if server else (60, 60))
        params = ckks.CKKSParams(self.poly_modulus_degree, tuple(bits), self.scale_bits or (40 if server else 50), server)
        shares = (float(self.shares[0]), float(self.shares[1]), float(self.shares[2]))
        return ProtocolConfig(self.lift, self.leakage, self.swap, self.send_scores, shares, params, self.n_workers)


class SHELoRADefense:
    """SHE-LoRA with ordered negotiation, one shared permutation and exact column-aware aggregation."""

    name: ClassVar[str] = "she_lora"
    version: ClassVar[str] = "1"
    Params = SHELoRAParams

    def __init__(self, params: SHELoRAParams | None = None) -> None:
        self.params = params or SHELoRAParams()
        self.cfg = self.params.protocol()
        self.fed: FederationInfo | None = None
        self.plan: Plan | None = None
        self._clients: ClientSide | None = None
        self._server: ServerSide | None = None
        self._round_total: dict[int, tuple[float, frozenset[int]]] = {}
        self._last_nego_round = 0
        self._provisional = False
        self._scores: dict[int, dict[str, list[float]]] = {}
        self.last_timings: dict[str, float] = {}

    # -- setup and negotiation -----------------------------------------------------------------
    def setup(self, fed: FederationInfo) -> dict[str, float]:
        members = []
        for c in fed.clients:
            if c.rank < 1:
                raise ValueError(f"she_lora: client {c.client_id} has LoRA rank {c.rank}; ranks must be >= 1")
            if not 0.0 <= c.budget <= 1.0:
                raise ValueError(f"she_lora: client {c.client_id} has budget {c.budget}; budgets must be in [0, 1]")
            members.append(Member(c.client_id, c.rank, c.budget * self.params.budget_scale))
        self.fed = fed
        self.plan = Plan(dict(fed.module_shapes), members, self.cfg.lift, self.cfg.ckks.poly_modulus_degree // 2)
        self._clients = ClientSide(self.plan, self.cfg)
        secret = ckks.secret_context_bytes(self._clients.ctx)
        public = ckks.public_context_bytes(self._clients.ctx)
        self._server = ServerSide(self.plan, self.cfg, public)
        return {"context_bytes": float(len(secret)), "public_context_bytes": float(len(public)), "keygen_s": self._clients.keygen_s}

    def negotiate(self, updates: Sequence[ClientUpdate]) -> list[WirePayload]:
        """Client top-k lists -> one ordered global list per module (when due), and the round's
        sample total (so client lifts carry final weights). Returns every message, uploads first."""
        clients, server = self._roles()
        if not updates:
            return []
        rnd = updates[0].round
        due = self._negotiation_due(updates, rnd)
        ups = []
        lists = []
        for u in updates:
            meta: dict[str, Any] = {"kind": "negotiation", "round": rnd, "client_id": u.client.client_id, "n_samples": u.n_samples}
            if due:
                msg = clients.topk(u.client.client_id, {n: f.A for n, f in u.factors.items()}, u.input_sq_norms)
                lists.append(msg)
                meta["topk"] = {n: list(t.codes) for n, t in msg.items()}
                if self.cfg.send_scores:
                    meta["scores"] = {n: list(t.scores or ()) for n, t in msg.items()}
                    self._scores[u.client.client_id] = meta["scores"]
            ups.append(WirePayload(sender=f"client:{u.client.client_id}", meta=meta))
        total = float(sum(u.n_samples for u in updates))
        self._round_total[rnd] = (total, frozenset(u.client.client_id for u in updates))
        down: dict[str, Any] = {"kind": "negotiation", "round": rnd, "n_total": total}
        if due:
            fresh = self._provisional or self._last_nego_round == 0 or self._refresh_due(rnd)
            codes = server.negotiate(lists, fresh=fresh)
            clients.install(server.version, codes)
            self._last_nego_round, self._provisional = rnd, False
            down["global"] = codes
        down["version"] = server.version
        return ups + [WirePayload(sender="server", meta=down)]

    def _negotiation_due(self, updates: Sequence[ClientUpdate], rnd: int) -> bool:
        server = self._roles()[1]
        if server.version == 0 or self._provisional or self._refresh_due(rnd):
            return True
        current = server.globals[server.version]
        return any(len(current[n]) < k for u in updates for n, k in self.plan.k[u.client.client_id].items())

    def _refresh_due(self, rnd: int) -> bool:
        r = self.params.sensitivity_refresh
        return r > 0 and self._last_nego_round > 0 and rnd - self._last_nego_round >= r

    # -- client side ---------------------------------------------------------------------------
    def protect(self, update: ClientUpdate) -> WirePayload:
        clients, server = self._roles()
        cid = update.client.client_id
        if server.version == 0 or any(len(server.globals[server.version][n]) < k for n, k in self.plan.k[cid].items()):
            self._negotiate_inline(update)  # e.g. the attack probe before any round: not metered
        total, members = self._round_total.get(update.round, (0.0, frozenset()))
        norm = total if cid in members and total > 0 else 1.0
        factors = {n: (f.A, f.B) for n, f in update.factors.items()}
        with thin_linalg():
            plain, cipher, enc_s = clients.protect(cid, update.client.scale, float(update.n_samples), factors, server.version, norm)
        meta = {**update_meta(update), "version": server.version, "lift": self.cfg.lift, "lift_norm": norm, "k": self.plan.k[cid]}
        return WirePayload(sender=f"client:{cid}", plain=plain, cipher=cipher, meta=meta, timings={"enc_s": enc_s})

    def _negotiate_inline(self, update: ClientUpdate) -> None:
        clients, server = self._roles()
        msg = clients.topk(update.client.client_id, {n: f.A for n, f in update.factors.items()}, update.input_sq_norms)
        codes = server.negotiate([msg], fresh=server.version == 0)
        clients.install(server.version, codes)
        self._provisional = self._last_nego_round == 0

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        clients = self._roles()[0]
        t0 = time.perf_counter()
        fused = clients.fuse(message.plain, message.cipher, message.meta)
        self.last_timings = {"dec_s": time.perf_counter() - t0}
        message.timings["dec_s"] = message.timings.get("dec_s", 0.0) + self.last_timings["dec_s"]
        seed = self.fed.seed if self.fed else 0
        with thin_linalg():
            out = finalize_to_rank(fused, client, seed)
        dtype = next(iter(message.plain.values())).dtype if message.plain else torch.float32
        return {n: LoRAFactors(f.A.to(dtype), f.B.to(dtype), f.scale) for n, f in out.items()}

    def fused_deltas(self, message: WirePayload) -> dict[str, Any]:
        """The full aggregate before truncation (FactoredDelta per module), as a client computes it."""
        return self._roles()[0].fuse(message.plain, message.cipher, message.meta)

    # -- server side ---------------------------------------------------------------------------
    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload:
        server = self._roles()[1]
        t0 = time.perf_counter()
        plain, cipher, meta = server.aggregate([(p.plain, p.cipher, p.meta) for p in payloads])
        return WirePayload(sender="server", plain=plain, cipher=dict(cipher), meta=meta, timings={"agg_s": time.perf_counter() - t0})

    def observe(self, payload: WirePayload) -> AttackerView:
        """What the server holds: B, the plaintext A columns (hidden ones zero), where it can the
        original layout; the encrypted columns only as ciphertext bytes."""
        server = self._roles()[1]
        version, ks, scale = int(payload.meta["version"]), payload.meta["k"], float(payload.meta["scale"])
        modules, leaked = {}, {"leakage": self.cfg.leakage, "swap": self.cfg.swap, "k": dict(ks), "lift": self.cfg.lift}
        for name, (_, n) in sorted(self.plan.shapes.items()):
            a_plain, B = payload.plain[f"{name}/A"], payload.plain[f"{name}/B"]
            r, k = a_plain.shape[0], ks[name]
            A = torch.zeros(r, n, dtype=a_plain.dtype)
            A[:, : n - k] = a_plain
            hidden = torch.zeros(r, n, dtype=torch.bool)
            hidden[:, n - k :] = True
            layout = server.known_layout(version, name)
            if layout is not None:  # plain indices: the server recomputes the permutation and undoes it
                A, hidden = layout.undo(A), layout.undo(hidden)
            modules[name] = ObservedModule(A=A, B=B.clone(), scale=scale, A_hidden=hidden, columns_permuted=layout is None and self.cfg.swap)
        codes = server.globals.get(version, {})
        leaked["global_list" if self.cfg.leakage == "plain" else "global_list_ope_codes"] = {n: list(c) for n, c in codes.items()}
        if self.cfg.leakage == "plain":
            leaked["encrypted_columns"] = {n: list(codes[n][: ks[n]]) for n in codes}
        if self.cfg.send_scores and payload.meta["client_id"] in self._scores:
            leaked["scores"] = self._scores[payload.meta["client_id"]]
        return AttackerView(defense=self.name, kind=payload.meta.get("kind", "weights"), modules=modules, leaked=leaked, cipher_bytes=payload.cipher_bytes())

    def privacy_params(self) -> dict[str, Any]:
        fractions = [k / self.plan.shapes[n][1] for ks in self.plan.k.values() for n, k in ks.items()] if self.plan else []
        return {
            "encrypted_fraction": sum(fractions) / len(fractions) if fractions else 0.0,
            "lift": self.cfg.lift, "leakage": self.cfg.leakage, "swap": self.cfg.swap, "budget_scale": self.params.budget_scale,
        }

    def _roles(self) -> tuple[ClientSide, ServerSide]:
        if self._clients is None or self._server is None or self.plan is None:
            raise RuntimeError("she_lora: call setup(fed) first")
        return self._clients, self._server
