"""Secure aggregation (SecAgg+, Flower's protocol and primitives): the server sees masked vectors and
the round's sum, never one client's update.

What a client sends. FlexLoRA's aggregate ``W = sum_i w_i s_i B_i A_i`` (``w_i = n_i / sum n``)
is a sum of dense products of different ranks; the factors themselves do not add (``sum B_i`` times
``sum A_i`` is not ``sum B_i A_i``, and ranks differ). Masks cancel only under addition, so each
client sends, per adapted module, its dense delta ``s_i B_i A_i`` (m x n) weighted as Flower's
``secaggplus_mod`` weights an update: multiplied by ``q_i / T`` with ``q_i = round(n_i / max_weight
* T)``, clipped, stochastically quantized to ``[0, T)`` and masked mod ``2^modulus_bits``, with
``q_i`` itself appended to the vector so that the sample counts are summed in secret too. The
server unmasks ``sum_i q_i s_i B_i A_i / T`` and ``sum_i q_i``, divides, and has exactly the FlexLoRA
aggregate up to quantization (``q_i / sum q`` is ``w_i`` to within ``1 / q_i``; each entry carries an
unbiased rounding error of at most ``2 * clipping_range / T``); it then re-factorises the dense sum
by SVD and broadcasts it at the top client rank like plain LoRA, and each client truncates to its
rank. The harness's ``agg_rel_err`` measures what quantization costs against its own float64
reference.

The cost: a masked value travels as flwr's int64 ndarray bytes, so a module costs ``8 * m * n``
bytes per client-round against ``4 * (m + n) * r`` for rank-r factors in the clear: ``2 * m * n /
((m + n) * r)`` times more: 16x for a 64 x 64 module at r = 4, 72x for SmolLM2's 576 x 576 q_proj at
r = 8, 400x for a 3200 x 3200 module at r = 8 (the tiny scenario's upload: 99 kB against plain
LoRA's 23 kB). The key agreement adds per client-round two
public keys, one encrypted share pair per neighbour each way and one share per neighbour for
unmasking (a few hundred bytes each): metered as negotiation traffic, apart from the upload.

The protocol (``defenses.secagg_protocol``) runs Flower's four stages over the round's messages:
``propose`` advertises two fresh key pairs; the server forwards each participant its neighbours'
keys and collects Shamir shares of each one's self-mask seed and mask key, encrypted per neighbour
(``exchange``/``answer``), and forwards them; ``protect`` uploads the masked vector; after the
uploads the server asks each survivor for the shares that remove the masks (self masks of the
survivors, pairwise masks of clients that dropped after sharing) and ``aggregate`` unmasks the sum.
Fewer survivors than the reconstruction threshold (or, in a SecAgg+ ring, a client whose surviving
neighbours hold fewer shares than that) end the round with a ``SecAggError`` saying so; the harness
records it as the row's error and goes on with the next cell. ``dropouts`` simulates them: that many
participants per round, drawn from the seed and the round, send their shares and then vanish (no
masked vector, no answer); the client role returns no upload for them, so the driver meters and
aggregates only the survivors, and ``agg_rel_err`` compares with the survivors' aggregate. A count
that leaves fewer than the threshold in every round is refused before any work (``problem``).
An upload outside a round's key agreement (an attack probe) is masked under a fresh seed nobody
holds a share of. The ``flower`` engine runs Flower's own ``SecAggPlusWorkflow`` and
``secaggplus_mod`` for the rounds instead (``benchmark.engines.flower_secagg``), with the settings
``secret_sum`` declares; this role then gives only each client's summands (``secret_summands``, None
for a simulated dropout, which Flower's workflow then sees fail after sharing its keys) and the
broadcast of the unmasked mean (``aggregate_sum``).

What an attacker on the server gets: per client, masked vectors (per-client attacks are
``incompatible``); per round, the sum it unmasked (``unmasked_sum``). Because ``SecAgg`` declares
``secret_sum``, the attack probe runs one secure round of every participant's probe update, each on
a private batch of its own, and the span attacks (those that ``reads_sums``) read the sum as one batch
of all their examples (``benchmark.federation.sum_view``). For that, a probe's update is summed as its
dense change from its start, not as weights (``dense_vectors``).

Under ``dp`` (``dp+secagg``) this is distributed DP: ``privatize_sum`` lets the DP layer clip each
client's weighted dense change and add its noise share after the weighting and before clipping to
``clipping_range``, quantization and masking; ``secret_sum`` tells it, before any work, the fewest
uploads a released sum holds (the reconstruction threshold) and the range an entry must fit
(``defenses.dp_distributed``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.common import bytes_to_ndarray, ndarray_to_bytes

from benchmark.contract import (
    AttackerView,
    ClientInfo,
    ClientRole,
    ClientUpdate,
    Defense,
    FederationInfo,
    LoRAFactors,
    SecretSum,
    ServerRole,
    StartKnowledge,
    SumPrivatizer,
    WirePayload,
)
from defenses import secagg_protocol as sa
from defenses.common import broadcast, broadcast_rank, finalize_to_rank, read_broadcast
from she_lora.lowrank import FactoredDelta

MAX_MODULUS_BITS = 48  # masked values, plus one mask per neighbour, stay far inside int64
DROPOUT_STREAM = 0xD809  # the simulated dropouts' own random stream, apart from quantization and the ring


@dataclass(frozen=True)
class SecAggParams:
    """SecAgg+ settings, with the meaning Flower's ``SecAggPlusWorkflow`` gives them."""

    num_shares: int = field(default=0, metadata={
        "help": "Shamir shares per client, i.e. its neighbours in the SecAgg+ ring, itself included (0: every "
                "participant of the round, plain SecAgg); 3 .. clients_per_round"})
    reconstruction_threshold: int = field(default=0, metadata={
        "help": "shares needed to rebuild a client's secret: the round survives num_shares - threshold dropouts "
                "among a client's neighbours, and fewer than threshold colluders learn nothing (0: a majority, "
                "num_shares // 2 + 1, at least 2); 2 .. num_shares"})
    clipping_range: float = field(default=8.0, metadata={
        "help": "each entry of a client's weighted dense delta (n_i / max_weight) * s_i * B_i A_i is clipped to "
                "[-clipping_range, clipping_range] before quantization (> 0; Flower's default 8, which also holds "
                "dp's default noise share under dp+secagg)"})
    quantization_bits: int = field(default=30, metadata={
        "help": "the clipped range becomes integers in [0, 2^bits) by flwr's stochastic quantization: a step of "
                "2 * clipping_range / 2^bits; 1 .. 30 (flwr rounds into int32)"})
    modulus_bits: int = field(default=40, metadata={
        "help": f"masks and sums live mod 2^bits; the round's sum must fit: >= quantization_bits + "
                f"log2(clients_per_round), <= {MAX_MODULUS_BITS}"})
    max_weight: float = field(default=1000.0, metadata={
        "help": "a client's sample count is divided by this before it weights the client's delta (Flower's "
                "max_weight); at least the largest client's sample count (> 0)"})
    dropouts: int = field(default=0, metadata={
        "help": "simulated dropouts: this many participants of each round, drawn from the seed and the round, "
                "vanish after the share-keys stage (their shares were sent; they upload no masked vector and "
                "answer nothing more); the survivors' sum is still unmasked while enough shares remain, else "
                "the round fails with the reason; 0 .. clients_per_round - reconstruction threshold"})

    def __post_init__(self) -> None:
        if self.num_shares != 0 and self.num_shares < 3:
            raise ValueError(f"secagg.num_shares must be 0 (every participant) or >= 3, got {self.num_shares}")
        if self.reconstruction_threshold != 0 and self.reconstruction_threshold < 2:
            raise ValueError(f"secagg.reconstruction_threshold must be 0 (a majority) or >= 2, "
                             f"got {self.reconstruction_threshold}")
        if self.num_shares and self.reconstruction_threshold > self.num_shares:
            raise ValueError(f"secagg.reconstruction_threshold={self.reconstruction_threshold} is above "
                             f"num_shares={self.num_shares}; use 2 .. {self.num_shares}")
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            raise ValueError(f"secagg.clipping_range must be a finite number > 0, got {self.clipping_range}")
        if not 1 <= self.quantization_bits <= 30:
            raise ValueError(f"secagg.quantization_bits must be in 1 .. 30 (flwr quantizes into int32), "
                             f"got {self.quantization_bits}")
        if not self.quantization_bits < self.modulus_bits <= MAX_MODULUS_BITS:
            raise ValueError(f"secagg.modulus_bits must be in {self.quantization_bits + 1} .. {MAX_MODULUS_BITS} "
                             f"(above quantization_bits), got {self.modulus_bits}")
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ValueError(f"secagg.max_weight must be a finite number > 0, got {self.max_weight}")
        if self.dropouts < 0:
            raise ValueError(f"secagg.dropouts must be >= 0, got {self.dropouts}")

    def round_config(self, participants: int) -> sa.RoundConfig:
        """The protocol settings of a round with this many participants."""
        shares = min(self.num_shares, participants) if self.num_shares else participants
        threshold = self.reconstruction_threshold or max(2, shares // 2 + 1)
        return sa.RoundConfig(shares, threshold, float(self.clipping_range), 2**self.quantization_bits,
                              2**self.modulus_bits, float(self.max_weight))


def problem(params: SecAggParams, clients_per_round: int) -> str | None:
    """Why these settings cannot run rounds of ``clients_per_round`` clients (None: they can)."""
    n = clients_per_round
    if n < 2:
        return f"clients_per_round={n}: secure aggregation needs >= 2 clients per round"
    if params.num_shares > n:
        return f"num_shares={params.num_shares} is above clients_per_round={n}; use 0 (every participant) or 3 .. {n}"
    shares = params.num_shares or n
    if params.reconstruction_threshold > shares:
        return (f"reconstruction_threshold={params.reconstruction_threshold} is above the {shares} shares per client "
                f"(clients_per_round={n}, num_shares={params.num_shares}); use 2 .. {shares}")
    why = dropout_problem(params, n)
    if why:
        return why
    need = params.quantization_bits + math.ceil(math.log2(n))
    if params.modulus_bits < need:
        return (f"modulus_bits={params.modulus_bits} cannot hold the sum of {n} values quantized to "
                f"quantization_bits={params.quantization_bits}; use modulus_bits >= {need} or fewer quantization_bits")
    return None


def dropout_problem(params: SecAggParams, clients_per_round: int) -> str | None:
    """Why ``params.dropouts`` would fail every round (None: some or all rounds can survive). Known
    before any work: fewer survivors than the threshold, or (SecAgg+ ring) a threshold equal to the
    ring size, which a dropped client's own lost share leaves out of reach."""
    k, n = params.dropouts, clients_per_round
    if k == 0:
        return None
    cfg = params.round_config(n)
    if n - k < cfg.threshold:
        other = "a lower reconstruction_threshold" if n - k >= 2 else f"clients_per_round >= {k + 2}"
        return (f"dropouts={k} leaves {n - k} of clients_per_round={n} clients to upload, fewer than the reconstruction "
                f"threshold {cfg.threshold}: every round would fail; use dropouts <= {max(0, n - cfg.threshold)} "
                f"or {other} (a threshold is at least 2)")
    if cfg.threshold >= cfg.num_shares:
        return (f"dropouts={k} with reconstruction_threshold={cfg.threshold} equal to the {cfg.num_shares} shares per "
                f"client: a dropped client holds one of its own shares, so its secret can never be rebuilt; "
                f"use a reconstruction_threshold below {cfg.num_shares} or dropouts=0")
    return None


def dropped_clients(seed: int, rnd: int, participants: Sequence[int], k: int) -> list[int]:
    """The ``k`` participants of round ``rnd`` that vanish after sharing their keys (the simulated
    dropouts): a draw from the seed and the round, the same in every process that knows the round's
    participants."""
    if k <= 0 or not participants:
        return []
    gen = np.random.default_rng(seed_of(seed, rnd, DROPOUT_STREAM))
    return sorted(int(c) for c in gen.choice(sorted(int(p) for p in participants), min(k, len(participants)),
                                             replace=False))


def dense_vectors(update: ClientUpdate, names: Sequence[str]) -> list[np.ndarray]:
    """What a client sums in secret, per module in ``names`` order (float64): its dense delta ``s * B @ A``
    after a round; for an attack probe's observation, the dense change it would make from its start
    (``prev``): ``s * (B A - B0 A0)`` after SGD steps, or, for a gradient (``factors`` hold dL/dA and
    dL/dB), the first-order change ``s * (dL/dB A0 + B0 dL/dA)``, so that the sum is a sum of changes."""
    out = []
    for n in names:
        f, start = update.factors[n], (update.prev or {}).get(n)
        if update.kind == "weights" or start is None:
            dense = f.delta()
        elif update.kind == "grad":
            dense = f.scale * (f.B @ start.A + start.B @ f.A)
        else:
            dense = f.delta() - start.delta()
        out.append(dense.detach().double().cpu().numpy())
    return out


def upload_meta(update: ClientUpdate, names: list[str], in_session: bool) -> dict[str, Any]:
    """What a masked upload says of itself (public facts: who, its rank, which modules in which order)."""
    c = update.client
    return {"client_id": c.client_id, "rank": c.rank, "scale": c.scale, "kind": update.kind, "round": update.round,
            "stage": "masked_vector", "modules": names, "in_session": in_session}


def seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1)[0])


class SecAggClient(ClientRole):
    """Every client's SecAgg+ side: fresh keys per round, shares, masking and unmask shares.
    One object plays every client (per-client sessions keyed by client id); no key leaves it except
    public keys and shares encrypted for a neighbour."""

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self.fed: FederationInfo | None = None
        self.sessions: dict[int, sa.ClientSession] = {}
        self.privatizer: SumPrivatizer | None = None
        # the simulated dropouts: each round's participants (round uploads only, never a probe's) and
        # the clients that vanished after sharing in their latest round
        self.members: dict[int, set[int]] = {}
        self.vanished: set[int] = set()

    def setup(self, fed: FederationInfo) -> WirePayload | None:
        self.fed = fed
        return None

    def privatize_sum(self, privatizer: SumPrivatizer) -> bool:
        """Distributed DP (``dp+secagg``): the weighted dense deltas go through ``privatizer`` before
        clipping, quantization and masking; a released sum holds at least the threshold's uploads."""
        self.privatizer = privatizer
        return True

    def propose(self, update: ClientUpdate) -> WirePayload:
        """Stage 0: advertise two fresh public keys for this round."""
        cid = update.client.client_id
        s = sa.advertise_keys(cid, self.params.round_config(self.fed.clients_per_round if self.fed else 2))
        self.sessions[cid] = s
        self.vanished.discard(cid)
        if update.kind == "weights":  # a round's upload; the probe's observations never drop out
            self.members = {r: m for r, m in self.members.items() if r >= update.round}
            self.members.setdefault(update.round, set()).add(cid)
            s.round = update.round
        return WirePayload(f"client:{cid}", cipher={"pk1": s.pk1, "pk2": s.pk2},
                           meta={"stage": "advertise_keys", "client_id": cid, "round": update.round})

    def answer(self, message: WirePayload, client: ClientInfo) -> WirePayload | None:
        s, meta = self.sessions[client.client_id], message.meta
        if meta["stage"] == "share_keys":
            s.cfg = sa.RoundConfig(**meta["config"])
            keys = dict(zip(meta["ids"], zip(message.cipher["pk1"], message.cipher["pk2"])))
            dsts, cts = sa.share_keys(s, keys)
            if self._drops_out(client.client_id, s):  # its shares go out, then nothing more
                self.vanished.add(client.client_id)
                s.masked = True  # its round masks are never used
            return WirePayload(f"client:{client.client_id}", cipher={"shares": cts},
                               meta={"stage": "share_keys", "client_id": client.client_id, "dsts": dsts})
        if client.client_id in self.vanished:
            return None
        if meta["stage"] == "forward_shares":
            sa.receive_shares(s, meta["srcs"], message.cipher["shares"])
            return None
        if meta["stage"] == "unmask":
            nids, shares = sa.unmask_shares(s, meta["active"], meta["dead"])
            return WirePayload(f"client:{client.client_id}", cipher={"shares": shares},
                               meta={"stage": "unmask", "client_id": client.client_id, "nids": nids})
        raise sa.SecAggError(f"client {client.client_id}: unknown SecAgg+ stage {meta['stage']!r}")

    def _drops_out(self, cid: int, s: sa.ClientSession) -> bool:
        """Whether ``cid`` is one of its round's simulated dropouts (``SecAggParams.dropouts``)."""
        if not self.params.dropouts or s.round not in self.members:
            return False
        return cid in dropped_clients(self.fed.seed if self.fed else 0, s.round, sorted(self.members[s.round]),
                                      self.params.dropouts)

    def protect(self, update: ClientUpdate) -> WirePayload | None:
        """Stage 2: the weighted dense deltas, quantized and masked. Outside a round's key agreement
        (an extra upload such as an attack probe) the mask is a fresh one nobody can remove. A
        simulated dropout sends nothing (None)."""
        cid, t0 = update.client.client_id, time.perf_counter()
        if cid in self.vanished and update.kind == "weights":
            return None
        names = sorted(update.factors)
        s = self.sessions.get(cid)
        cfg = s.cfg if s is not None else self.params.round_config(self.fed.clients_per_round if self.fed else 2)
        seed = seed_of(self.fed.seed if self.fed else 0, update.round, cid, 0 if s is not None and not s.masked else 1)
        privatize = None
        if self.privatizer is not None:
            privatizer = self.privatizer

            def privatize(weighted: list[np.ndarray], weight: float) -> list[np.ndarray]:
                return privatizer(update, weighted, weight, cfg.threshold)
        quantized = sa.quantize_weighted(dense_vectors(update, names), float(update.n_samples), cfg, seed,
                                         privatize)
        session_ready = s is not None and not s.masked and bool(s.rd_seed)
        masked = sa.mask(s, quantized) if session_ready else sa.one_time_mask(quantized, cfg)
        return WirePayload(f"client:{cid}", cipher={"masked": [ndarray_to_bytes(a) for a in masked]},
                           meta=upload_meta(update, names, session_ready), timings={"enc_s": time.perf_counter() - t0})

    def secret_summands(self, update: ClientUpdate,
                        participants: Sequence[int]) -> tuple[list[np.ndarray], dict[str, Any]] | None:
        """The dense deltas for a SecAgg+ that the engine runs itself (Flower's ``secaggplus_mod``
        weights, quantizes and masks them); None: this client is one of the round's simulated
        dropouts. Under distributed DP the noise share is added to the weighted deltas as in
        ``protect`` and divided back out of the weight the mod applies."""
        k = self.params.dropouts
        if k and update.client.client_id in dropped_clients(self.fed.seed if self.fed else 0, update.round,
                                                            participants, k):
            return None
        names = sorted(update.factors)
        vectors = dense_vectors(update, names)
        if self.privatizer is not None:
            cfg = self.params.round_config(len(participants))
            ratio = round(update.n_samples / cfg.max_weight * cfg.quantization_range) / cfg.quantization_range
            noisy = self.privatizer(update, [v * ratio for v in vectors], ratio, cfg.threshold)
            vectors = [np.asarray(v, dtype=np.float64) / ratio for v in noisy]
        return vectors, upload_meta(update, names, True)

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        return finalize_to_rank(read_broadcast(message), client, self.fed.seed if self.fed else 0)


@dataclass
class ServerRound:
    """The server's books for one round: keys, ring, shares in transit, survivors, unmask shares."""

    cfg: sa.RoundConfig
    keys: dict[int, tuple[bytes, bytes]]
    graph: dict[int, set[int]]
    stage: str = "keys"
    sharers: list[int] = field(default_factory=list)
    active: list[int] = field(default_factory=list)
    shares: dict[int, list[bytes]] = field(default_factory=dict)


class SecAggServer(ServerRole):
    """Runs SecAgg+'s server stages: forwards keys and encrypted shares, collects masked vectors
    and unmask shares, unmasks the round's sum. It never sees a single client's update."""

    name: ClassVar[str] = "secagg"

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self.fed: FederationInfo | None = None
        self.round: ServerRound | None = None
        self._rounds = 0
        self.last_sum: dict[str, torch.Tensor] | None = None  # the latest unmasked sum (the server holds it)

    def negotiate(self, proposals: Sequence[WirePayload]) -> WirePayload | None:
        """Stage 0's answers: the round's participants and their public keys; the ring is drawn here."""
        keys = {int(p.meta["client_id"]): (p.cipher["pk1"], p.cipher["pk2"]) for p in proposals}
        self._rounds += 1
        cfg = self.params.round_config(len(keys))
        rng = np.random.default_rng(seed_of(self.fed.seed if self.fed else 0, self._rounds))
        self.round = ServerRound(cfg, keys, sa.neighbours(sorted(keys), cfg.num_shares, rng))
        return None

    def exchange(self, received: Sequence[WirePayload]) -> dict[int, WirePayload]:
        r = self.round
        if r is None or r.stage == "done":
            return {}
        if r.stage == "keys":  # stage 1: each participant gets its neighbours' keys and shares its secrets
            r.stage = "share_keys"
            return {nid: self._keys_for(nid) for nid in r.keys}
        if r.stage == "share_keys":  # stage 2's request: forward each participant the shares addressed to it
            sent = {int(p.meta["client_id"]): (p.meta["dsts"], p.cipher["shares"]) for p in received}
            r.sharers, r.stage = sorted(sent), "forwarded"
            routes = sa.forward_shares(sent, r.sharers)
            return {nid: WirePayload("server", cipher={"shares": cts}, meta={"stage": "forward_shares", "srcs": srcs})
                    for nid, (srcs, cts) in routes.items()}
        if r.stage == "forwarded":  # the clients stored their shares; their masked vectors come as uploads
            r.stage = "collect"
            return {}
        if r.stage == "collect":  # right after the uploads
            return self._ask_unmask(received)
        if r.stage == "unmask":
            for p in received:
                for nid, share in zip(p.meta["nids"], p.cipher["shares"], strict=True):
                    r.shares.setdefault(int(nid), []).append(share)
            r.stage = "done"
        return {}

    def _keys_for(self, nid: int) -> WirePayload:
        r = self.round
        ids = sorted(r.graph[nid] & set(r.keys))
        return WirePayload("server", cipher={"pk1": [r.keys[i][0] for i in ids], "pk2": [r.keys[i][1] for i in ids]},
                           meta={"stage": "share_keys", "ids": ids, "config": asdict(r.cfg)})

    def _ask_unmask(self, uploads: Sequence[WirePayload]) -> dict[int, WirePayload]:
        """Stage 3's request: survivors are the sharers that uploaded, the dead those that did not."""
        r = self.round
        uploaded = {int(p.meta["client_id"]) for p in uploads}
        r.active = sorted(uploaded & set(r.sharers))
        dead = set(r.sharers) - uploaded
        if len(r.active) < r.cfg.threshold:
            raise sa.SecAggError(f"secagg: {len(r.active)} of {len(r.keys)} clients sent a masked vector, fewer than "
                                 f"the reconstruction threshold {r.cfg.threshold}: the round's sum cannot be unmasked")
        short = [(nid, len(r.graph[nid] & set(r.active))) for nid in r.sharers
                 if len(r.graph[nid] & set(r.active)) < r.cfg.threshold]
        if short:  # SecAgg+ ring: a secret whose surviving neighbours hold too few shares stays masked
            nid, left = short[0]
            raise sa.SecAggError(f"secagg: client {nid}'s secret has {left} surviving holder(s) of its shares, fewer than "
                                 f"the reconstruction threshold {r.cfg.threshold} ({len(r.active)} of {len(r.keys)} "
                                 f"clients sent a masked vector; gone after sharing: {sorted(dead)}): the round's sum "
                                 f"cannot be unmasked")
        r.stage = "unmask"
        return {nid: WirePayload("server", meta={"stage": "unmask", "active": sorted(r.graph[nid] & set(r.active)),
                                                 "dead": sorted(r.graph[nid] & dead)}) for nid in r.active}

    def aggregate(self, payloads: Sequence[WirePayload]) -> WirePayload:
        t0 = time.perf_counter()
        r = self.round
        if r is None or r.stage != "done":
            raise sa.SecAggError("secagg: aggregate before the unmask stage ended (no shares to remove the masks)")
        masked = [[bytes_to_ndarray(b) for b in p.cipher["masked"]] for p in payloads
                  if int(p.meta["client_id"]) in r.active]
        mean = sa.unmask_sum(masked, r.shares, r.active, r.graph, r.keys, r.cfg)
        message = self._broadcast(mean, payloads[0].meta["modules"], r.active, t0)
        self.round = None
        return message

    def aggregate_sum(self, mean: Sequence[np.ndarray], uploads: Sequence[WirePayload]) -> WirePayload:
        """The broadcast from the mean that Flower's ``SecAggPlusWorkflow`` unmasked from ``uploads``."""
        survivors = sorted(int(p.meta["client_id"]) for p in uploads)
        return self._broadcast(mean, uploads[0].meta["modules"], survivors, time.perf_counter())

    def _broadcast(self, mean: Sequence[np.ndarray], modules: Sequence[str], survivors: list[int],
                   t0: float) -> WirePayload:
        """The unmasked mean kept (``unmasked_sum``), its dense deltas re-factorised by SVD and
        broadcast like plain LoRA."""
        deltas = {}
        self.last_sum = {name: torch.from_numpy(np.asarray(dense, dtype=np.float64)) for name, dense in zip(modules, mean)}
        for name, dense in self.last_sum.items():
            u, s, vh = torch.linalg.svd(dense, full_matrices=False)
            deltas[name] = FactoredDelta(u.float(), s.float(), vh.float())
        message = broadcast(deltas, broadcast_rank(self.fed))
        message.meta.update(survivors=survivors)
        message.timings["agg_s"] = time.perf_counter() - t0
        return message

    def observe(self, payload: WirePayload) -> AttackerView:
        """A masked vector is uniform mod 2^modulus_bits to whoever lacks the other clients' shares."""
        return AttackerView(defense=self.name, kind=payload.meta.get("kind", "weights"), modules={},
                            leaked={k: payload.meta[k] for k in ("rank",) if k in payload.meta},
                            cipher_bytes=payload.cipher_bytes(),
                            note="a SecAgg+ masked vector: the server learns only the round's sum")

    def unmasked_sum(self) -> dict[str, torch.Tensor] | None:
        """The weighted mean of the latest round's dense deltas, as the unmask stage left it."""
        return self.last_sum

    def known_start(self, broadcast: WirePayload, client: ClientInfo) -> StartKnowledge:
        factors = finalize_to_rank(read_broadcast(broadcast), client, self.fed.seed if self.fed else 0)
        return StartKnowledge(factors, "exact", "the server unmasked the sum and replayed the client's finalize")

    def privacy_params(self) -> dict[str, Any]:
        p = self.params
        return {"encrypted_fraction": 1.0, "secagg_num_shares": p.num_shares,
                "secagg_reconstruction_threshold": p.reconstruction_threshold, "secagg_clipping_range": p.clipping_range,
                "secagg_quantization_bits": p.quantization_bits, "secagg_modulus_bits": p.modulus_bits}


class SecAgg(Defense):
    """SecAgg+ through Flower's primitives: clients upload masked weighted dense deltas; the server
    unmasks only their sum, the FlexLoRA aggregate up to quantization (see the module docstring)."""

    name: ClassVar[str] = "secagg"
    version: ClassVar[str] = "1"
    Params = SecAggParams
    Client = SecAggClient
    Server = SecAggServer
    encrypts: ClassVar[str] = "all"

    @classmethod
    def check(cls, params: SecAggParams, fed: FederationInfo) -> str | None:
        return problem(params, fed.clients_per_round)

    def secret_sum(self, clients_per_round: int) -> SecretSum:
        """A released sum holds at least the reconstruction threshold's uploads (the server refuses
        to unmask fewer); an entry beyond ``clipping_range`` is clipped by the quantizer."""
        cfg = self.params.round_config(clients_per_round)
        return SecretSum(cfg.threshold, float(self.params.clipping_range), f"{self.name}.clipping_range", asdict(cfg))
