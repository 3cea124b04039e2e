"""SHE-LoRA: selective CKKS encryption of the most sensitive LoRA-A columns, negotiated per module.

The method lives in the ``she_lora`` library; this adapter maps it onto the harness's two roles:
``SHELoRAClient`` wraps ``she_lora.client.ClientSide`` (the secret CKKS key and the OPE key),
``SHELoRAServer`` wraps ``she_lora.server.ServerSide``, built from the public context bytes the
clients send at setup. They share nothing else: every fact crosses as a ``WirePayload``.

Round flow: ``propose`` (each client's sample count, and its top-k lists when due) -> the server's
``negotiate`` reply (the ordered global list per module, the round's sample total) -> ``protect`` per
client -> ``aggregate`` -> ``finalize`` per client.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

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
from defenses.common import finalize_to_rank, padding_rows, span_rows, update_meta, with_rank
from she_lora import ckks
from she_lora.client import ClientSide
from she_lora.lowrank import svd_of_product
from she_lora.negotiation import DEFAULT_SHARES, TopK
from she_lora.negotiation_gp import GP_CALLS
from she_lora.plan import LEAKAGES, LIFTS, Member, Plan, ProtocolConfig
from she_lora.reparam import EXPONENTS_KEY, thin_linalg
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
    negotiation: ``fixed`` (default: ``shares`` for every budget tier) or ``gp`` (the public code:
    per-tier shares that maximise the paper's Eq. 14, found by scikit-optimize's gp_minimize in
    ``gp_calls`` evaluations, starting from ``shares`` and seeded by the federation seed; see
    ``she_lora.negotiation_gp``). Either way the row's ``privacy`` records the method, the latest
    negotiation's shares and Eq. 14 scores, and every negotiation's record (``negotiations``).
    padding: where a client's rank exceeds the aggregate's (a 192-output module at rank 256), the rows
    ``finalize`` adds come from the public seed; ``permuted`` (default) draws them in the permuted
    layout, ``original`` in the original column order (the leak, kept to measure it; see
    ``defenses.common.finalize_to_rank``). The public SHE-LoRA code pads nothing: it slices the SVD
    of the fused aggregate to the top rank (``fusion_plain_cipher``, then ``plain_adaptive_rank``), so
    where that rank exceeds min(m, n) a client's A simply has fewer rows than its LoRA rank.
    """

    lift: str = field(default="client_lift", metadata={"help": (
        "client_lift: clients encrypt w*s*B*a per selected column and the server only adds (lean context, no "
        "Galois keys); server_lift: clients encrypt the r-vectors a and the server multiplies by its plaintext B "
        "(the paper's way: ~m/r times smaller uploads, a large Galois key set, much more server time)")})
    leakage: str = field(default="ope", metadata={"help": (
        "what the server learns of column positions: ope (keyed order-preserving codes) | plain (indices in the clear)")})
    swap: bool = field(default=True, metadata={"help": "apply the shared column permutation built from the global list"})
    sensitivity_refresh: int = field(default=0, metadata={"help": (
        "0: negotiate the global lists once (the paper); R > 0: renegotiate every R rounds; >= 0")})
    budget_scale: float = field(default=1.0, metadata={"help": "multiplies every tier's encryption budget; in (0, 1]"})
    send_scores: bool = field(default=False, metadata={"help": "send sensitivity scores with the top-k lists (a leak)"})
    poly_modulus_degree: int = field(default=8192, metadata={"help": "CKKS ring degree N (N/2 slots); a power of two"})
    coeff_mod_bit_sizes: tuple[int, ...] = field(default=(), metadata={"help": (
        "CKKS coefficient modulus chain; empty: (60, 60) for client_lift, (60, 40, 40, 60) for server_lift")})
    scale_bits: int = field(default=0, metadata={"help": "CKKS scale 2^bits; 0: 50 for client_lift, 40 for server_lift"})
    n_workers: int = field(default=1, metadata={"help": "processes for client encryption and the server lift; >= 1"})
    shares: tuple[float, ...] = field(default=DEFAULT_SHARES, metadata={"help": (
        "(tier, Common, Sensitivity) shares of each budget increment in the negotiation; 3 numbers")})
    negotiation: str = field(default="fixed", metadata={"help": (
        "fixed: `shares` for every tier | gp: per-tier shares maximising the paper's Eq. 14 (scikit-optimize)")})
    gp_calls: int = field(default=GP_CALLS, metadata={"help": "evaluations of gp_minimize for negotiation=gp"})
    padding: str = field(default="permuted", metadata={"help": (
        "how a client pads A rows when the aggregate's rank is below its own (public seed): permuted (drawn in the "
        "permuted layout the server sees, so replaying them reveals nothing) | original (drawn in the original "
        "column order: a server that replays them recovers the secret permutation; for measuring that leak)")})

    def __post_init__(self) -> None:
        if self.lift not in LIFTS:
            raise ValueError(f"she_lora.lift must be one of {', '.join(LIFTS)}, got {self.lift!r}")
        if self.leakage not in LEAKAGES:
            raise ValueError(f"she_lora.leakage must be one of {', '.join(LEAKAGES)}, got {self.leakage!r}")
        if not 0.0 < self.budget_scale <= 1.0:
            raise ValueError(f"she_lora.budget_scale must be in (0, 1], got {self.budget_scale}")
        if self.sensitivity_refresh < 0:
            raise ValueError(f"she_lora.sensitivity_refresh must be >= 0, got {self.sensitivity_refresh}")
        if self.padding not in PADDINGS:
            raise ValueError(f"she_lora.padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")
        if len(self.shares) != 3:
            raise ValueError(f"she_lora.shares needs 3 numbers (tier, common, sensitivity), got {self.shares}")
        self.protocol()  # validates the CKKS parameters and the combination

    def protocol(self) -> ProtocolConfig:
        server = self.lift == "server_lift"
        bits = self.coeff_mod_bit_sizes or ((60, 40, 40, 60) if server else (60, 60))
        params = ckks.CKKSParams(self.poly_modulus_degree, tuple(bits), self.scale_bits or (40 if server else 50), server)
        shares = (float(self.shares[0]), float(self.shares[1]), float(self.shares[2]))
        return ProtocolConfig(self.lift, self.leakage, self.swap, self.send_scores, shares, params, self.n_workers,
                              self.negotiation, self.gp_calls)


PADDINGS = ("permuted", "original")


def make_plan(params: SHELoRAParams, fed: FederationInfo) -> Plan:
    """The public plan both roles derive from the setup facts: budgets, k per module, packing."""
    members = []
    for c in fed.clients:
        if c.rank < 1:
            raise ValueError(f"she_lora: client {c.client_id} has LoRA rank {c.rank}; ranks must be >= 1")
        if not 0.0 <= c.budget <= 1.0:
            raise ValueError(f"she_lora: client {c.client_id} has budget {c.budget}; budgets must be in [0, 1]")
        members.append(Member(c.client_id, c.rank, c.budget * params.budget_scale))
    cfg = params.protocol()
    return Plan(dict(fed.module_shapes), members, cfg.lift, cfg.ckks.poly_modulus_degree // 2)


def refresh_due(params: SHELoRAParams, last_round: int, rnd: int) -> bool:
    r = params.sensitivity_refresh
    return r > 0 and last_round > 0 and rnd - last_round >= r


class SHELoRAClient(ClientRole):
    """The clients' shared state (``she_lora.client.ClientSide``: CKKS secret key, OPE key, installed
    global lists) plus what the negotiation replies told them (versions, round sample totals)."""

    def __init__(self, params: SHELoRAParams) -> None:
        self.params = params
        self.cfg = params.protocol()
        self.fed: FederationInfo | None = None
        self.plan: Plan | None = None
        self._side: ClientSide | None = None
        self._round_total: dict[int, tuple[float, frozenset[int]]] = {}
        self._exponents: dict[int, dict[str, int]] = {}  # round -> agreed client_lift exponents
        self._last_nego_round = 0
        self._fused: tuple[WirePayload, dict[str, Any]] | None = None

    def setup(self, fed: FederationInfo) -> WirePayload:
        self.fed = fed
        self.plan = make_plan(self.params, fed)
        self._side = ClientSide(self.plan, self.cfg)
        public = ckks.public_context_bytes(self._side.ctx)
        self._costs = {"context_bytes": float(len(ckks.secret_context_bytes(self._side.ctx))),
                       "public_context_bytes": float(len(public)), "keygen_s": self._side.keygen_s}
        return WirePayload("clients", cipher={"public_context": public}, meta={"kind": "setup"})

    def setup_costs(self) -> dict[str, float]:
        return dict(self._costs)

    @property
    def side(self) -> ClientSide:
        if self._side is None or self.plan is None:
            raise RuntimeError("she_lora: call setup(fed) first")
        return self._side

    @property
    def version(self) -> int:
        return max(self.side.globals, default=0)

    def _due(self, update: ClientUpdate) -> bool:
        """A client sends its top-k lists when no global list covers its budget yet, or a refresh is due."""
        if self.version == 0 or refresh_due(self.params, self._last_nego_round, update.round):
            return True
        current = self.side.globals[self.version]
        return any(len(current[n]) < k for n, k in self.plan.k[update.client.client_id].items())

    def propose(self, update: ClientUpdate) -> WirePayload:
        """The client's sample count, its top-k lists when a negotiation is due (OPE-encoded or plain
        column indices; sensitivity scores only with ``send_scores``) and, for client lift, a bound on
        its lifted values' exponents (the server agrees one per module, so the sum stays in range)."""
        cid = update.client.client_id
        meta: dict[str, Any] = {"kind": "negotiation", "round": update.round, "client_id": cid, "n_samples": update.n_samples}
        if self.cfg.lift == "client_lift":
            factors = {n: (f.A, f.B) for n, f in update.factors.items()}
            meta["exponents"] = self.side.bound_exponents(cid, update.client.scale, factors)
        if self._due(update):
            msg = self.side.topk(cid, {n: f.A for n, f in update.factors.items()}, update.input_sq_norms)
            meta["topk"] = {n: list(t.codes) for n, t in msg.items()}
            if self.cfg.send_scores:
                meta["scores"] = {n: list(t.scores or ()) for n, t in msg.items()}
        return WirePayload(sender=f"client:{cid}", meta=meta)

    def accept(self, reply: WirePayload) -> None:
        meta = reply.meta
        rnd = int(meta["round"])
        self._round_total[rnd] = (float(meta["n_total"]), frozenset(int(c) for c in meta["clients"]))
        if "exponents" in meta:
            self._exponents[rnd] = {n: int(e) for n, e in meta["exponents"].items()}
        if "global" in meta:
            self.side.install(int(meta["version"]), meta["global"])
            self._last_nego_round = rnd

    def protect(self, update: ClientUpdate) -> WirePayload:
        side, cid, version = self.side, update.client.client_id, self.version
        if version == 0 or any(len(side.globals[version][n]) < k for n, k in self.plan.k[cid].items()):
            raise ValueError(f"she_lora: client {cid} has no negotiated global list covering its budget; "
                             "negotiate in this round before protect")
        total, members = self._round_total.get(update.round, (0.0, frozenset()))
        norm = total if cid in members and total > 0 else 1.0
        factors = {n: (f.A, f.B) for n, f in update.factors.items()}
        exponents = self._exponents.get(update.round)
        if self.cfg.lift == "client_lift" and (update.kind != "weights" or exponents is None):
            # not summed with anyone's (an attack probe): the client's own exact exponents
            exponents = side.propose_exponents(cid, update.client.scale, float(update.n_samples), factors, version, norm)
        with thin_linalg():
            plain, cipher, enc_s = side.protect(cid, update.client.scale, float(update.n_samples), factors, version, norm,
                                                exponents)
        meta = {**update_meta(update), "version": version, "lift": self.cfg.lift, "lift_norm": norm, "k": self.plan.k[cid]}
        return WirePayload(sender=f"client:{cid}", plain=plain, cipher=cipher, meta=meta,
                           timings={"enc_s": enc_s} if cipher else {})

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        """Decrypt and fuse once per received broadcast object (the engine hands each receiver its own
        copy, so each receiver's decryption is measured), then truncate to the client's rank."""
        if self._fused is None or self._fused[0] is not message:
            top = max(c.rank for c in self.fed.clients) if self.fed else None
            self._fused = (message, self.side.fuse(message.plain, message.cipher, message.meta, rank=top))
        fused = self._fused[1]
        seed = self.fed.seed if self.fed else 0
        place = None
        if self.params.padding == "permuted":  # drawn in the layout the server sees, placed back in ours
            place = {n: layout.undo for n, layout in self.side.layouts[int(message.meta["version"])].items()}
        with thin_linalg():
            out = finalize_to_rank(fused, client, seed, place)
        dtype = next(iter(message.plain.values())).dtype if message.plain else torch.float32
        return {n: LoRAFactors(f.A.to(dtype), f.B.to(dtype), f.scale) for n, f in out.items()}

    def fused_deltas(self, message: WirePayload) -> dict[str, Any]:
        """The full aggregate before truncation (FactoredDelta per module), as a client computes it."""
        return self.side.fuse(message.plain, message.cipher, message.meta)


class SHELoRAServer(ServerRole):
    """Negotiation and column-aware aggregation (``she_lora.server.ServerSide``, a public context
    only), and what that lets the server see: plaintext columns, OPE codes or indices, ciphertext."""

    name: ClassVar[str] = "she_lora"

    def __init__(self, params: SHELoRAParams) -> None:
        self.params = params
        self.cfg = params.protocol()
        self.plan: Plan | None = None
        self._side: ServerSide | None = None
        self._last_nego_round = 0
        self._scores: dict[int, dict[str, list[float]]] = {}

    def setup(self, fed: FederationInfo, hello: Sequence[WirePayload]) -> None:
        super().setup(fed, hello)
        self.plan = make_plan(self.params, fed)
        self._side = ServerSide(self.plan, self.cfg, hello[0].cipher["public_context"])

    @property
    def side(self) -> ServerSide:
        if self._side is None or self.plan is None:
            raise RuntimeError("she_lora: call setup(fed, hello) first")
        return self._side

    def negotiate(self, proposals: Sequence[WirePayload]) -> WirePayload | None:
        """One ordered global list per module from the clients' top-k lists (when any were sent),
        and the round's sample total (so client lifts carry final weights)."""
        if not proposals:
            return None
        rnd = int(proposals[0].meta["round"])
        lists = []
        for p in proposals:
            if "topk" in p.meta:
                lists.append({n: TopK(tuple(c), tuple(p.meta.get("scores", {}).get(n, ())) or None) for n, c in p.meta["topk"].items()})
                if "scores" in p.meta:
                    self._scores[int(p.meta["client_id"])] = p.meta["scores"]
        reply: dict[str, Any] = {"kind": "negotiation", "round": rnd,
                                 "n_total": float(sum(float(p.meta["n_samples"]) for p in proposals)),
                                 "clients": [int(p.meta["client_id"]) for p in proposals]}
        if self.cfg.lift == "client_lift" and all("exponents" in p.meta for p in proposals):
            reply["exponents"] = self.side.agree_exponents([p.meta["exponents"] for p in proposals])
        if lists:
            side = self.side
            fresh = side.version == 0 or refresh_due(self.params, self._last_nego_round, rnd)
            reply["global"] = side.negotiate(lists, fresh=fresh, seed=self.fed.seed)
            self._last_nego_round = rnd
        reply["version"] = self.side.version
        return WirePayload(sender="server", meta=reply)

    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload:
        t0 = time.perf_counter()
        plain, cipher, meta = self.side.aggregate([(p.plain, p.cipher, p.meta) for p in payloads])
        return WirePayload(sender="server", plain=plain, cipher=dict(cipher), meta=meta, timings={"agg_s": time.perf_counter() - t0})

    def observe(self, payload: WirePayload) -> AttackerView:
        """What the server holds: B, the plaintext A columns (hidden ones zero), where it can the
        original layout; the encrypted columns only as ciphertext bytes."""
        side = self.side
        version, ks, scale = int(payload.meta["version"]), payload.meta["k"], float(payload.meta["scale"])
        modules, leaked = {}, {"leakage": self.cfg.leakage, "swap": self.cfg.swap, "k": dict(ks), "lift": self.cfg.lift}
        for name, (_, n) in sorted(self.plan.shapes.items()):
            a_plain, B = payload.plain[f"{name}/A"], payload.plain[f"{name}/B"]
            r, k = a_plain.shape[0], ks[name]
            A = torch.zeros(r, n, dtype=a_plain.dtype)
            A[:, : n - k] = a_plain
            hidden = torch.zeros(r, n, dtype=torch.bool)
            hidden[:, n - k :] = True
            layout = side.known_layout(version, name)
            if layout is not None:  # plain indices: the server recomputes the permutation and undoes it
                A, hidden = layout.undo(A), layout.undo(hidden)
            permuted = layout is None and self.cfg.swap
            g = len(side.globals.get(version, {}).get(name, ())) if permuted else 0
            # slots n-g..n-1 hold the global list's columns (public layout rule); the other visible
            # slots lose at most g columns to the swaps, at positions only the OPE key tells
            modules[name] = ObservedModule(A=A, B=B.clone(), scale=scale, A_hidden=hidden, columns_permuted=permuted,
                                           foreign=tuple(range(n - g, n - k)), displaced=g)
        codes = side.globals.get(version, {})
        leaked["global_list" if self.cfg.leakage == "plain" else "global_list_ope_codes"] = {n: list(c) for n, c in codes.items()}
        if self.cfg.leakage == "plain":
            leaked["encrypted_columns"] = {n: list(codes[n][: ks[n]]) for n in codes}
        if EXPONENTS_KEY in payload.plain:  # powers of two of the encrypted values' magnitudes, in the clear
            leaked["lift_exponents"] = payload.plain[EXPONENTS_KEY].tolist()
        if self.cfg.send_scores and payload.meta["client_id"] in self._scores:
            leaked["scores"] = self._scores[payload.meta["client_id"]]
        return AttackerView(defense=self.name, kind=payload.meta.get("kind", "weights"), modules=modules, leaked=leaked, cipher_bytes=payload.cipher_bytes())

    def known_start(self, broadcast: WirePayload, client: ClientInfo) -> StartKnowledge:
        """The client's start recomputed from the broadcast's plaintext part alone (the encrypted
        columns taken as zero), in the column order the server's views use: the original one under
        plain leakage, the permuted one otherwise. Exact only when nothing was encrypted.

        The estimate keeps the rank the client's fused aggregate has (the encrypted columns add
        k_round directions), so it pads as many rows as the client and from the same stream. What
        is exact even so (``StartSpace``): every starting row of A lies in the plaintext part's row
        space plus the encrypted slots' unit vectors plus the padding rows, which the server replays
        in its view's order unless ``padding="original"`` hides that order from it (then they are
        ``a_loose``, given in the original order). B's column space holds the lifted encrypted
        columns, which are ciphertext: no bound (``b_cols=None``)."""
        version, k_round = int(broadcast.meta["version"]), broadcast.meta["k_round"]
        top = max(c.rank for c in self.fed.clients) if self.fed else client.rank
        deltas, frames, rows, free, place = {}, {}, {}, {}, {}
        with thin_linalg():
            for name in sorted(self.plan.shapes):
                m, n = self.plan.shapes[name]
                us, vh = broadcast.plain[f"{name}/US"].double(), broadcast.plain[f"{name}/Vh"].double()
                k = int(k_round[name])
                slots = [n - 1 - j for j in range(k)]  # encrypted in the broadcast: permuted positions
                layout = self.side.known_layout(version, name)
                if layout is not None:
                    vh, slots = layout.undo(vh), [layout.perm[p] for p in slots]
                    if self.params.padding == "permuted":
                        place[name] = layout.undo
                frames[name] = layout is not None or self.params.padding == "permuted"  # padding in the view's order
                rows[name], free[name] = broadcast.plain[f"{name}/Vh"] if layout is None else vh, tuple(sorted(slots))
                estimate = svd_of_product(us, vh, rank=top)
                deltas[name] = with_rank(estimate, min(top, m, n, us.shape[1] + k))
            factors = finalize_to_rank(deltas, client, self.fed.seed if self.fed else 0, place)
        dtype = next(iter(broadcast.plain.values())).dtype
        spaces = {}
        for name, f in factors.items():
            pad = padding_rows(deltas[name], client.rank)
            tail = f.A[client.rank - pad:]
            loose = () if frames[name] else tuple(range(client.rank - pad, client.rank))
            spaces[name] = StartSpace(span_rows([rows[name]] + ([tail] if frames[name] else [])), free[name],
                                      loose, tail.float() if loose else None)
        factors = {n: LoRAFactors(f.A.to(dtype), f.B.to(dtype), f.scale) for n, f in factors.items()}
        if not any(k_round.values()):
            return StartKnowledge(factors, "exact", "nothing was encrypted: replayed the client's finalize")
        order = "original" if self.cfg.leakage == "plain" or not self.cfg.swap else "permuted"
        return StartKnowledge(factors, "estimate", f"finalize replayed on the plaintext part, encrypted columns as zero "
                              f"({order} column order)", spaces)

    def start_from_upload(self, upload: WirePayload, client: ClientInfo) -> StartKnowledge:
        """A private round-1 start estimated from the client's own upload of that round, in the column
        order of ``observe``'s view: A's plaintext columns (the start's plus the local change), zero
        where the view hides a column (encrypted) or knows a slot holds some other, unknown feature
        (``foreign``); B = 0, LoRA's public initialisation. No ``StartSpace``: the start's rows lie
        in no space the transcript bounds (the local change moves every row off the upload's), so an
        attack can only subtract or project through this estimate, errors and all."""
        view = self.observe(upload)
        factors = {}
        for name, m in view.modules.items():
            A = m.A.masked_fill(m.A_hidden, 0.0) if m.A_hidden is not None else m.A.clone()
            if m.foreign:
                A[:, list(m.foreign)] = 0.0
            factors[name] = LoRAFactors(A, torch.zeros_like(m.B), m.scale)
        return StartKnowledge(factors, "estimate", "plaintext A columns from the client's own round-1 upload (start "
                              "plus its local change), encrypted ones unknown (zero), B = 0 as LoRA starts")

    def privacy_params(self) -> dict[str, Any]:
        fractions = [k / self.plan.shapes[n][1] for ks in self.plan.k.values() for n, k in ks.items()] if self.plan else []
        return {
            "encrypted_fraction": sum(fractions) / len(fractions) if fractions else 0.0,
            "lift": self.cfg.lift, "leakage": self.cfg.leakage, "swap": self.cfg.swap, "budget_scale": self.params.budget_scale,
            "negotiation": self.cfg.negotiation, **self._negotiation_record(),
        }

    def _negotiation_record(self) -> dict[str, Any]:
        """The latest negotiation's shares per budget tier and Eq. 14 scores (tuned and with the fixed
        shares), and every negotiation's record (a later one may only extend the list for new tiers)."""
        done = self._side.negotiations if self._side is not None else {}
        if not done:
            return {}
        latest = done[max(done)].record()
        return {"negotiation_shares": latest["shares"], "negotiation_eq14": latest["eq14"],
                "negotiation_eq14_fixed": latest["eq14_fixed"],
                "negotiations": [{"version": v, **{k: x for k, x in r.record().items() if k != "method"}} for v, r in sorted(done.items())]}


class SHELoRADefense(Defense):
    """SHE-LoRA with ordered negotiation, one shared permutation and exact column-aware aggregation."""

    name: ClassVar[str] = "she_lora"
    version: ClassVar[str] = "3"
    Params = SHELoRAParams
    Client = SHELoRAClient
    Server = SHELoRAServer
    encrypts: ClassVar[str] = "selective"

    def applied_budget(self, tier: ClientInfo) -> float | None:
        return tier.budget * self.params.budget_scale

    def paper_method(self) -> str | None:
        return "SHE-LoRA"

    def cost_role(self) -> str | None:
        return f"she_lora_{self.params.lift}"
