"""The server-side round driver: one federation's rounds, whatever engine reaches the clients.

It samples each round's clients (``Schedule``), brings each up to date (the server's ``init`` message
or the latest broadcast it missed), has them train through their ``ClientEndpoint``, runs the
protocol steps of ``benchmark.federation.protocol`` over the ``Channel`` (which meters every message and
records the server's transcript), and keeps the referee's books: timings, per-tier costs, the
aggregation error against a reference the harness computes itself (``reference``), the probe at the
threat's round and the final evaluation (``Referee``). It holds the defense's server role and never
its client role; the clients' private results reach it as harness data, never as messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from benchmark.contract import ClientInfo, ClientUpdate, FederationInfo, ServerRole, WirePayload
from benchmark.federation.endpoint import ClientEndpoint, Factors
from benchmark.federation.probe import ProbeResult, ProbeRound
from benchmark.federation.protocol import (
    Parties,
    Upload,
    aggregate,
    exchange,
    mean_or_none,
    receive,
    settle,
    setup_roles,
)
from benchmark.federation.referee import Referee
from benchmark.federation.reference import aggregation_error, reference_aggregate
from benchmark.federation.sampling import Schedule
from benchmark.federation.train import LocalResult
from benchmark.federation.transcript import Channel, Message, describe_upload
from benchmark.federation.wire import WireMeter


@dataclass
class SimulationResult:
    """A run's measurements (``metrics``), per-round records, the probe's views and truth, the
    tokenizer that scores reconstructions, and the run's privacy facts as its two roles told them."""

    metrics: dict[str, Any]
    rounds: list[dict[str, Any]]
    probe: ProbeResult | None
    tokenizer: Any = None
    privacy: dict[str, Any] = field(default_factory=dict)

    def privacy_params(self) -> dict[str, Any]:
        """The row's privacy facts (the server role's public ones, the clients' on top)."""
        return dict(self.privacy)


class SecureSum(Protocol):
    """An engine's own secure aggregation of a round (Flower's SecAgg+ workflow), used in place of the
    defense's protocol when the defense declares it (``SecretSum.secagg_plus``): every message it
    sends and receives goes through ``channel``; it returns the survivors' updates with their uploads
    as the server received them, the server role's broadcast (``ServerRole.aggregate_sum``) and the
    aggregation time."""

    def __call__(self, server: ServerRole, updates: Sequence[ClientUpdate], rnd: int,
                 channel: Channel) -> tuple[list[tuple[ClientUpdate, Upload]], WirePayload, float]: ...


class RoundDriver:
    """One federation's rounds from the server's side (see the module docstring)."""

    def __init__(self, fed: FederationInfo, server: ServerRole, clients: ClientEndpoint, referee: Referee,
                 schedule: Schedule, progress: Callable[[str], None] | None = None,
                 secure_sum: SecureSum | None = None) -> None:
        self.fed, self.clients, self.referee, self.schedule = fed, clients, referee, schedule
        self.secure_sum = secure_sum
        self.parties = Parties(clients, server)
        self.progress = progress or (lambda _msg: None)
        self.channel = Channel()
        self.head: dict[str, Tensor] = referee.initial_head()
        self.global_sent: Message | None = None  # the latest aggregate's broadcast, as the transcript recorded it
        self.latest: WirePayload | None = None  # the latest aggregate as its receivers got it
        # harness data: the start of each client that holds the latest aggregate (the last round's
        # participants), as it finalized it; before any aggregate, round-1 factors. Any other client
        # is sent the aggregate when sampled, so no entry outlives a round: this holds at most a
        # round's participants (and the probe's target), never the clients that are not sampled.
        self.start: dict[int, Factors] = {}
        self.timings: dict[str, list[float | None]] = {"enc_s": [], "protect_s": [], "dec_s": [], "agg_s": [], "train_s": []}
        self.per_tier: dict[str, dict[str, list[float]]] = {}
        self.results: dict[int, LocalResult] = {}  # harness data: the latest round's local results
        self.probe_start: Factors = {}
        self.round_starts: dict[int, Factors] = {}  # harness data: each participant's start this round

    @property
    def meter(self) -> WireMeter:
        return self.channel.meter

    # ---- what each client starts a round from -----------------------------------------------

    def start_factors(self, client: ClientInfo, rnd: int) -> Factors:
        """The client's start: the latest aggregate (sent to it now if it missed it), else its
        round-1 factors, drawn privately or received from the server as the threat says (and then
        what the defense's client role adopts of them, ``ClientRole.adopt_start``)."""
        return self.starts([client], rnd)[0]

    def starts(self, clients: Sequence[ClientInfo], rnd: int) -> list[Factors]:
        """``start_factors`` of each client, as one phase: the server's messages to those that need
        one go through the channel first, in order, then the clients take them up together."""
        needed = [c for c in clients if c.client_id not in self.start]
        if needed and self.global_sent is not None:  # they missed the latest aggregate
            for c in needed:  # each is sent it and finalizes its own copy of it
                self.channel.again(self.global_sent, rnd, [c.client_id])
            for c, factors in zip(needed, self.finalize(self.global_sent.payload, needed), strict=True):
                self.start[c.client_id] = factors
        elif needed:
            messages = [self.referee.init_message(c) for c in needed]
            delivered = [None if m is None else self.channel.down(m, rnd, [c.client_id], "init")
                         for c, m in zip(needed, messages, strict=True)]
            for c, factors in zip(needed, self.clients.init_many(list(zip(needed, delivered))), strict=True):
                self.start[c.client_id] = factors
        return [self.start[c.client_id] for c in clients]

    def finalize(self, message: WirePayload, clients: Sequence[ClientInfo]) -> list[Factors]:
        """Each client's own finalize of ``message``; their decryption times go to the books in order."""
        out = self.clients.finalize_many(message, clients)
        self.timings["dec_s"] += [dec_s for _, dec_s in out]
        return [factors for factors, _ in out]

    # ---- one round -------------------------------------------------------------------------

    def train(self, clients: Sequence[ClientInfo], rnd: int) -> list[LocalResult]:
        """Local training of the round's participants, as one phase, each from its start."""
        starts = self.starts(clients, rnd)
        self.round_starts = {c.client_id: start for c, start in zip(clients, starts, strict=True)}
        results = self.clients.train_many(list(zip(clients, starts)), rnd, self.head)
        self.timings["train_s"] += [r.train_s for r in results]
        return results

    def run_round(self, rnd: int) -> dict[str, Any]:
        picks = self.schedule.picks(rnd)
        clients = [self.fed.clients[cid] for cid in picks]
        results = dict(zip(picks, self.train(clients, rnd), strict=True))
        updates = [results[cid].update for cid in picks]
        if self.secure_sum is not None:
            pairs, message, agg_s = self.secure_sum(self.parties.server, updates, rnd, self.channel)
        else:
            pairs, message, agg_s = self.protocol_round(updates, rnd)
        survivors, uploads = [u for u, _ in pairs], [sent for _, sent in pairs]
        for u, sent in pairs:
            self.timings["enc_s"].append(sent.enc_s)
            self.timings["protect_s"].append(sent.protect_s)
            tier = self.per_tier.setdefault(u.client.tier, {"bytes_up": [], "cipher_bytes_up": [], "enc_s": []})
            tier["bytes_up"].append(sent.nbytes)
            tier["cipher_bytes_up"].append(sent.cipher_bytes)
            tier["enc_s"].append(sent.enc_s)
        self.timings["agg_s"].append(agg_s)
        self._average_head([results[u.client.client_id] for u in survivors])
        self.latest = self.channel.down(message, rnd, picks, "broadcast")
        self.global_sent = self.channel.transcript.messages[-1]
        reference = reference_aggregate(survivors)  # what the server could aggregate: those that uploaded
        # only this round's receivers hold the aggregate (earlier rounds' starts are stale); each
        # decrypts its own copy: dec_s is one client's cost, never a cache hit
        self.start = dict(zip(picks, self.finalize(self.latest, clients), strict=True))
        err = max((aggregation_error(self.start[c.client_id], reference, c) for c in clients), default=0.0)
        self.results = results
        losses = [r.loss for r in results.values() if r.loss is not None]
        return {"round": rnd, "clients": picks, "train_loss": sum(losses) / len(losses) if losses else None,
                "agg_s": agg_s, "agg_rel_err": err, "bytes_up": sum(u.nbytes for u in uploads),
                "bytes_down": message.nbytes() * len(picks),
                "silent": sorted(set(picks) - {u.client.client_id for u in survivors})}  # dropped out

    def protocol_round(self, updates: list[ClientUpdate], rnd: int) -> tuple[list[tuple[ClientUpdate, Upload]],
                                                                            WirePayload, float]:
        """The defense's own round protocol: negotiation, exchanges, uploads, exchanges, aggregation.
        Returns the survivors' updates with their uploads (a client whose ``protect`` sent nothing
        dropped out after the negotiation), the aggregate and the aggregation time."""
        settle(self.parties, updates, self.clients.propose_many(updates), rnd, self.channel)
        participants = [u.client for u in updates]
        exchange(self.parties, participants, [], rnd, self.channel)
        t0 = time.perf_counter()
        protected = self.clients.protect_many(updates)
        wall_s = (time.perf_counter() - t0) / max(1, len(updates))
        pairs = [(u, sent) for u, p in zip(updates, protected, strict=True)
                 if (sent := receive(p, u, rnd, self.channel, wall_s=wall_s)) is not None]
        exchange(self.parties, participants, [sent.payload for _, sent in pairs], rnd, self.channel)
        message, agg_s = aggregate(self.parties, [sent for _, sent in pairs])
        return pairs, message, agg_s

    def _average_head(self, results: list[LocalResult]) -> None:
        """Encoder heads are averaged in the clear (FedAvg) under every defense, as in the paper."""
        if not self.head:
            return
        total = sum(r.update.n_samples for r in results)
        self.head = {n: sum(r.head[n] * (r.update.n_samples / total) for r in results) for n in self.head}
        self.meter.up[-len(results):] = [b + sum(t.numel() * 4 for t in self.head.values()) for b in self.meter.up[-len(results):]]

    # ---- the whole run ---------------------------------------------------------------------

    def run(self) -> SimulationResult:
        t0 = time.perf_counter()
        setup_costs = setup_roles(self.parties, self.fed, self.channel)
        setup_s = setup_costs.pop("setup_s")
        rounds, probe, probe_s = [], None, 0.0
        when, target = self.schedule.probe_round, self.fed.clients[self.schedule.probe_client]
        for rnd in range(1, self.schedule.rounds + 1):
            if rnd == when:  # harness data: the truth of what the probe starts from
                self.probe_start = self.start_factors(target, rnd)
            self.progress(f"round {rnd}/{self.schedule.rounds}")
            rounds.append(self.run_round(rnd))
            if rnd == when:
                t_probe = time.perf_counter()
                pr = ProbeRound(self.parties, self.channel, target, rnd, self.probe_start, self.results,
                                self.round_starts)
                probe = self.referee.probe(pr, self.progress)
                probe_s = time.perf_counter() - t_probe
        t_eval = time.perf_counter()
        utility = self.referee.evaluate(self.latest, self.head, self.clients)
        eval_s = time.perf_counter() - t_eval
        timed = {"setup_s": setup_s, "eval_s": eval_s, "probe_s": probe_s}
        metrics = {**utility, **self.meter.summary(), **self.summary(rounds, timed, t0), "setup_costs": setup_costs}
        if probe is not None and probe.probe_view is not None:
            metrics["start_known"] = probe.probe_view.start_known
            metrics["server_saw"] = describe_upload(probe.probe_view)
        privacy = {**self.parties.server.privacy_params(), **self.clients.privacy_params()}
        return SimulationResult(metrics, rounds, probe, self.referee.tokenizer, privacy)

    def summary(self, rounds: list[dict[str, Any]], timed: dict[str, float], t0: float) -> dict[str, Any]:
        """Timings (means per client-round, totals in ``time_breakdown``), the worst aggregation error,
        per-tier costs and the plaintext FlexLoRA yardstick."""
        own = self.referee.metrics()
        totals = {k.replace("_s", "_total_s"): sum(v or 0.0 for v in vals) for k, vals in self.timings.items()}
        return {
            **{k: mean_or_none(v) for k, v in self.timings.items()}, **own, **timed,
            "agg_rel_err": max(r["agg_rel_err"] for r in rounds), "sim_s": time.perf_counter() - t0,
            "final_train_loss": rounds[-1]["train_loss"],
            "time_breakdown": {**own, **timed, **totals, "sim_s": time.perf_counter() - t0},
            "per_tier": summarize_tiers(self.per_tier, self.fed.clients),
            "flexlora_broadcast_bytes": flexlora_broadcast_bytes(self.fed),
        }


def flexlora_broadcast_bytes(fed: FederationInfo) -> float:
    """What a plaintext FlexLoRA broadcast truncated at the top client rank costs for these shapes
    (float32 U*S and Vh per module): the common yardstick beside each defense's own downlink."""
    top = max(c.rank for c in fed.clients)
    return float(sum((m + n) * top * 4 for m, n in fed.module_shapes.values()))


def summarize_tiers(per_tier: dict[str, dict[str, list[float]]], clients: Sequence[ClientInfo]) -> dict[str, dict]:
    """Mean upload cost per client-round in each device tier, with the tier's rank and budget."""
    info = {c.tier: c for c in clients}
    return {
        tier: {"rank": info[tier].rank, "budget": info[tier].budget,
               **{k: mean_or_none(v) for k, v in values.items() if v}}
        for tier, values in sorted(per_tier.items(), key=lambda kv: info[kv[0]].rank)
    }
