"""The embedded engine: every client in one process, one after another.

One call simulates a whole federation for one defense, scenario and seed, runs the attack probe at
the threat's round, evaluates the final global model, and hands back measurements plus the attacker
views. Clients and server talk only through a ``Channel`` (``benchmark.protocol``), which records
the server's transcript; the views are built from that transcript alone
(``benchmark.transcript.attacker_view``). Defenses and attacks never see this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from benchmark.api import (
    AttackerView,
    ClientInfo,
    ClientUpdate,
    Defense,
    FederationInfo,
    LoRAFactors,
    WirePayload,
)
from benchmark.config import ScenarioConfig
from benchmark.data import Dataset, Example, assign_tiers, load_dataset, partition
from benchmark.lora import LoRAHost, is_head, trained_or_merged
from benchmark.models import LoadedModel, load_model, shared_copy
from benchmark.protocol import aggregate, mean_or_none, negotiate, setup_roles, upload
from benchmark.seeding import derive, rng, seed_everything, torch_generator
from benchmark.train import (
    LocalResult,
    TaskSpec,
    encode,
    evaluate,
    local_train,
    seen_private_texts,
    to_device,
)
from benchmark.transcript import Channel, PublicFacts, attacker_view, describe_upload, read_init, wire_copy
from she_lora.lowrank import FactoredDelta, aggregate_lowrank, relative_error, to_lora

ProbeKey = tuple[int, int]  # (batch size, index of the private batch)


@dataclass
class ProbeCase:
    """One observed probe message: the attacker's view of it, and the truth only the harness keeps
    (the private texts of the batch, no template, no label)."""

    view: AttackerView | None
    references: list[str]


@dataclass
class ProbeResult:
    """What the attacks get (views, built from the server's transcript) and what only the harness
    keeps (the truth: the private texts and which candidates were members). One simulation observes
    every probe batch of every batch size the threat names, all from the target's same start."""

    cases: dict[ProbeKey, ProbeCase]
    round_view: AttackerView | None
    candidates_are_members: list[bool]
    template: str = "{text}"
    label_names: tuple[str, ...] = ()

    @property
    def first(self) -> ProbeCase | None:
        return next(iter(self.cases.values()), None)

    @property
    def probe_view(self) -> AttackerView | None:
        """The first probe's view (what ``server_saw`` and ``start_known`` describe)."""
        return self.first.view if self.first else None

    @property
    def references(self) -> list[str]:
        return self.first.references if self.first else []


def probe_keys(scenario: ScenarioConfig) -> list[ProbeKey]:
    """The probe cases one simulation observes: each batch size x each private batch; a real upload
    (``observation=upload``) is a single case."""
    th = scenario.threat
    if th.observation == "upload":
        return [(scenario.train.batch_size, 0)]
    return [(b, j) for b in th.probe_batch_sizes for j in range(scenario.probe.batches)]


def probe_batch(order: Sequence[int], size: int, index: int) -> list[int]:
    """Private batch ``index`` of ``size`` examples: consecutive slices of one seeded permutation of
    the target's shard (disjoint while the shard lasts, wrapping around after)."""
    if not order:
        return []
    start = index * size
    return [order[(start + k) % len(order)] for k in range(min(size, len(order)))]


@dataclass
class SimulationResult:
    metrics: dict[str, Any]
    rounds: list[dict[str, Any]]
    probe: ProbeResult | None
    tokenizer: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_clients(scenario: ScenarioConfig, seed: int) -> tuple[ClientInfo, ...]:
    tiers = assign_tiers(scenario.n_clients, [t.fraction for t in scenario.tiers], seed)
    return tuple(
        ClientInfo(cid, scenario.tiers[t].name, scenario.tiers[t].rank, scenario.tiers[t].budget, scenario.lora.alpha)
        for cid, t in enumerate(tiers)
    )


def reserve_holdout(shards: list[list[int]], target: int, k: int, seed: int) -> list[int]:
    """Take ``k`` examples (at most half) out of the target's shard, in place, so that no local training
    ever uses them: the membership probe's non-members, from the target's own distribution."""
    shard = shards[target]
    n = min(k, len(shard) // 2)
    picked = set(rng(seed, "holdout").permutation(len(shard))[:n].tolist())
    shards[target] = [i for j, i in enumerate(shard) if j not in picked]
    return sorted(shard[j] for j in picked)


def probe_target(scenario: ScenarioConfig, seed: int) -> int:
    """The attack probe's target client: as configured, or (-1) the first client of the top rank."""
    if scenario.probe.client >= 0:
        return scenario.probe.client
    clients = make_clients(scenario, seed)
    top = max(c.rank for c in clients)
    return next(c.client_id for c in clients if c.rank == top)


def sample_round(scenario: ScenarioConfig, seed: int, rnd: int) -> list[int]:
    """The round's participants; the probe's target always takes part in the probe round."""
    picks = rng(seed, "sampling", rnd).choice(scenario.n_clients, scenario.clients_per_round, replace=False).tolist()
    target = probe_target(scenario, seed)
    if rnd == scenario.threat.round and target not in picks:
        picks[-1] = target
    return sorted(picks)


def reference_aggregate(updates: Sequence[ClientUpdate]) -> dict[str, FactoredDelta]:
    """Plaintext FlexLoRA on the raw updates: what an exact defense's aggregate must equal."""
    total = sum(u.n_samples for u in updates)
    out = {}
    for name in updates[0].factors:
        terms = [(u.n_samples / total * u.factors[name].scale, u.factors[name].B, u.factors[name].A) for u in updates]
        out[name] = aggregate_lowrank(terms)
    return out


def aggregation_error(finalized: dict[str, LoRAFactors], reference: dict[str, FactoredDelta], client: ClientInfo) -> float:
    """Relative error of a client's finalized own-rank delta against the reference truncated alike."""
    worst = 0.0
    for name, ref in reference.items():
        A, B = to_lora(ref, client.rank, client.scale)
        got = finalized[name]
        worst = max(worst, relative_error(got.delta(), client.scale * (B @ A)))
    return worst


class Federation:
    """State of one simulated federation: model host, clients, data shards, the channel between the
    defense's client role and its server role, and what each client last received."""

    def __init__(self, scenario: ScenarioConfig, defense: Defense, seed: int, device: str = "cpu",
                 progress: Callable[[str], None] | None = None) -> None:
        self.scenario, self.defense, self.seed, self.device = scenario, defense, seed, device
        self.progress = progress or (lambda _msg: None)
        seed_everything(seed)
        self.data: Dataset = load_dataset(scenario.data, scenario.task, seed)
        num_labels = max(2, len(self.data.label_names))
        self.loaded: LoadedModel = load_model(scenario.model, scenario.task, num_labels)
        self.clients = make_clients(scenario, seed)
        self.shards = partition([ex.label for ex in self.data.train], scenario.n_clients, scenario.partition, seed)
        self.holdout = reserve_holdout(self.shards, probe_target(scenario, seed), scenario.probe.members, seed)
        targets = scenario.lora.target_modules or self.loaded.default_targets
        # On CPU the host shares the frozen weights with the base (moving it to a device would move them too).
        base = self.loaded.fresh_copy(trained_or_merged(tuple(targets)) if device == "cpu" else None)
        self.host = LoRAHost(base.to(device), [c.rank for c in self.clients], scenario.lora.alpha,
                             tuple(targets), scenario.lora.dropout)
        self.spec = TaskSpec(scenario.task, self.loaded.arch, scenario.data.template, self.data.label_names,
                             scenario.train.seq_len)
        self.fed = FederationInfo(self.clients, self.host.module_shapes, scenario.rounds, scenario.clients_per_round,
                                  seed, device)
        self.channel = Channel()
        self.public = PublicFacts(self.public_model, self.loaded.tokenizer, scenario.task, scenario.data.template, device)
        self.global_msg: WirePayload | None = None  # the latest aggregate, as the server holds it
        self.global_round = 0
        self.latest: WirePayload | None = None  # the latest aggregate as its receivers got it
        self.received: dict[int, int] = {}  # client -> round of the aggregate it last received
        self.start: dict[int, dict[str, LoRAFactors]] = {}
        self.head: dict[str, Tensor] = {n: p.detach().cpu().clone() for n, p in self.host.head_parameters().items()}
        self.timings: dict[str, list[float | None]] = {"enc_s": [], "protect_s": [], "dec_s": [], "agg_s": [], "train_s": []}
        self.per_tier: dict[str, dict[str, list[float]]] = {}
        self._public_models: dict[str, torch.nn.Module] = {}

    @property
    def meter(self):
        return self.channel.meter

    def client_examples(self, cid: int) -> list[Example]:
        return [self.data.train[i] for i in self.shards[cid]]

    # ---- what each client starts a round from -----------------------------------------------

    def start_factors(self, client: ClientInfo, rnd: int) -> dict[str, LoRAFactors]:
        """The client's start: the latest aggregate (sent to it now if it missed it), else its
        round-1 factors, drawn privately or received from the server as the threat says."""
        cid = client.client_id
        if self.global_msg is not None and self.received.get(cid) != self.global_round:
            delivered = self.channel.down(self.global_msg, rnd, [cid], "broadcast")
            self.start[cid] = self.finalize(delivered, client)
            self.received[cid] = self.global_round
        if cid not in self.start:
            self.start[cid] = self.initial_factors(client, rnd)
        return self.start[cid]

    def initial_factors(self, client: ClientInfo, rnd: int) -> dict[str, LoRAFactors]:
        if self.scenario.threat.init == "client":
            return self.host.init_factors(client.rank, torch_generator(self.seed, "init", client.client_id))
        drawn = self.host.init_factors(client.rank, torch_generator(self.seed, "server-init", client.rank))
        message = WirePayload("server", plain={f"{n}/A": f.A for n, f in drawn.items()},
                              meta={"kind": "init", "rank": client.rank,
                                    "out_features": {n: int(f.B.shape[0]) for n, f in drawn.items()}})
        return read_init(self.channel.down(message, rnd, [client.client_id], "init"), client)

    def finalize(self, message: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
        t0 = time.perf_counter()
        factors = self.defense.client.finalize(message, client)
        self.timings["dec_s"].append(time.perf_counter() - t0)
        return factors

    # ---- one round -------------------------------------------------------------------------

    def train_client(self, client: ClientInfo, rnd: int) -> LocalResult:
        result = local_train(
            self.host, client, self.start_factors(client, rnd), self.client_examples(client.client_id),
            len(self.shards[client.client_id]), self.spec, self.scenario.train, self.loaded.tokenizer,
            torch_generator(self.seed, "batches", rnd, client.client_id), rnd, self.device, self.head,
            self.defense.client,
        )
        self.timings["train_s"].append(result.train_s)
        return result

    def run_round(self, rnd: int) -> dict[str, Any]:
        picks = sample_round(self.scenario, self.seed, rnd)
        results = {cid: self.train_client(self.clients[cid], rnd) for cid in picks}
        updates = [results[cid].update for cid in picks]
        negotiate(self.defense, updates, rnd, self.channel)
        uploads = []
        for u in updates:
            sent = upload(self.defense, u, rnd, self.channel)
            self.timings["enc_s"].append(sent.enc_s)
            self.timings["protect_s"].append(sent.protect_s)
            tier = self.per_tier.setdefault(u.client.tier, {"bytes_up": [], "cipher_bytes_up": [], "enc_s": []})
            tier["bytes_up"].append(sent.nbytes)
            tier["cipher_bytes_up"].append(sent.cipher_bytes)
            tier["enc_s"].append(sent.enc_s)
            uploads.append(sent)
        message, agg_s = aggregate(self.defense, uploads)
        self.timings["agg_s"].append(agg_s)
        self._average_head([results[cid] for cid in picks])
        self.global_msg, self.global_round = message, rnd
        self.latest = self.channel.down(message, rnd, picks, "broadcast")
        reference = reference_aggregate(updates)
        err = 0.0
        for cid in picks:  # each receiver decrypts its own copy: dec_s is one client's cost, never a cache hit
            self.start[cid] = self.finalize(wire_copy(self.latest), self.clients[cid])
            self.received[cid] = rnd
            err = max(err, aggregation_error(self.start[cid], reference, self.clients[cid]))
        self.last_round = {"picks": picks, "results": results}
        loss = sum(r.loss for r in results.values()) / len(results)
        return {"round": rnd, "clients": picks, "train_loss": loss, "agg_s": agg_s, "agg_rel_err": err,
                "bytes_up": sum(u.nbytes for u in uploads), "bytes_down": message.nbytes() * len(picks)}

    def _average_head(self, results: list[LocalResult]) -> None:
        """Encoder heads are averaged in the clear (FedAvg) under every defense, as in the paper."""
        if not self.head:
            return
        total = sum(r.update.n_samples for r in results)
        self.head = {n: sum(r.head[n] * (r.update.n_samples / total) for r in results) for n in self.head}
        self.meter.up[-len(results):] = [b + sum(t.numel() * 4 for t in self.head.values()) for b in self.meter.up[-len(results):]]

    def global_deltas(self) -> dict[str, Tensor]:
        """The global model as the most capable client reconstructs it from the last broadcast."""
        if self.latest is None:
            return {}
        best = max(self.clients, key=lambda c: c.rank)
        factors = self.defense.client.finalize(self.latest, best)
        return {n: f.delta() for n, f in factors.items()}

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            for n, p in self.host.head_parameters().items():
                p.copy_(self.head[n])
        with self.host.merged(self.global_deltas()) as model:
            return evaluate(model, self.loaded.tokenizer, self.spec, self.data.test, device=self.device)

    # ----------------------------------------------------------------------------------------
    # The attack probe: the client computes, the server observes, the harness keeps the truth.

    def public_model(self, deltas: dict[str, Tensor]) -> torch.nn.Module:
        """A copy of the base model with ``deltas`` merged: all the server can build from its knowledge.
        Views of the same start share one copy (every probe batch of a round starts alike)."""
        key = _content_key(deltas)
        if key not in self._public_models:
            with self.host.merged(deltas) as model:
                self._public_models[key] = _detached_copy(model.get_base_model())
        return self._public_models[key]

    def probe(self, rnd: int) -> ProbeResult:
        """The target's attacked messages of round ``rnd``: its real upload (``observation=upload``) or
        one update per private probe batch from its real start (``sgd``/``grad``), each protected by
        the client role and recorded like any upload. Views come from the transcript alone."""
        th, train = self.scenario.threat, self.scenario.train
        client = self.clients[probe_target(self.scenario, self.seed)]
        cases: dict[ProbeKey, ProbeCase] = {}
        if th.observation == "upload":
            references = seen_private_texts(self.loaded.tokenizer, self.spec, self.last_round["results"][client.client_id].examples)
            view = attacker_view(self.defense.server, self.channel.transcript, client, rnd, "upload", self.public,
                                 lr=train.lr, local_steps=train.local_steps, batch_size=train.batch_size)
            cases[probe_keys(self.scenario)[0]] = ProbeCase(view, references)
        else:
            examples = self.client_examples(client.client_id)
            order = rng(self.seed, "probe").permutation(len(examples)).tolist()
            for n, (size, index) in enumerate(probe_keys(self.scenario)):
                self.progress(f"probe batch {index + 1}/{self.scenario.probe.batches} of size {size}")
                if n:  # the previous probe is read into its view: dropping its ciphertext bounds memory
                    self.channel.transcript.drop_last("probe")
                batch_ex = [examples[i] for i in probe_batch(order, size, index)]
                upload(self.defense, self.probe_update(client, rnd, batch_ex), rnd, self.channel, kind="probe")
                view = attacker_view(self.defense.server, self.channel.transcript, client, rnd, "probe", self.public,
                                     lr=th.lr, local_steps=1 if th.observation == "grad" else th.steps,
                                     batch_size=len(batch_ex))
                cases[(size, index)] = ProbeCase(view, seen_private_texts(self.loaded.tokenizer, self.spec, batch_ex))
        round_view, is_member = self._round_view(client, rnd)
        return ProbeResult(cases, round_view, is_member, *self.spec.private_format())

    def probe_update(self, client: ClientInfo, rnd: int, batch_ex: list[Example]) -> ClientUpdate:
        """``threat.steps`` SGD steps at ``threat.lr`` (or, for ``grad``, the gradient the optimizer
        would apply) on the private batch, through the client role's training wrapper (DP-SGD)."""
        th = self.scenario.threat
        start = self.probe_start
        batch = to_device(encode(self.loaded.tokenizer, self.spec, batch_ex), self.device)
        self.host.use(client.rank)
        self.host.set_factors(client.rank, start)
        model = self.host.model
        model.train()
        grad_mode = th.observation == "grad"
        steps = 1 if grad_mode else th.steps
        # lr 0 for a gradient: the (possibly privatizing) optimizer fills p.grad and moves nothing
        opt = torch.optim.SGD(self.host.lora_parameters(client.rank), lr=0.0 if grad_mode else th.lr)
        sums: dict[str, Tensor] = {}
        model, opt, loader = self.defense.client.wrap_training(model, opt, [batch] * steps, client)
        try:
            for _, step_batch in zip(range(steps), loader):
                step_batch = to_device(step_batch, self.device)
                opt.zero_grad(set_to_none=True)
                with self.host.input_norm_hooks(sums, [step_batch["attention_mask"]]):
                    loss = model(**step_batch).loss
                loss.backward()
                opt.step()
            factors = self.host.get_grads(client.rank) if grad_mode else self.host.get_factors(client.rank)
        finally:
            self.defense.client.release()
            self.host.model.eval()
        return ClientUpdate(client, rnd, factors, len(self.shards[client.client_id]), sums, None, start, th.observation)

    def _round_view(self, client: ClientInfo, rnd: int) -> tuple[AttackerView | None, list[bool]]:
        """The target's real upload of the probe round, with membership candidates: members are
        distinct texts it trained on in this round (its upload's change over the start reflects this
        round only), non-members its held-out examples (same client, same label mix, never trained
        on by it, nor by anyone if the text recurs elsewhere in the training set), equally many."""
        result = self.last_round["results"].get(client.client_id)
        if result is None:
            return None, []
        trained = list(dict.fromkeys(result.texts))
        reserved = set(self.holdout)
        everyone = {self.spec.prompt(ex) for i, ex in enumerate(self.data.train) if i not in reserved}
        held = list(dict.fromkeys(t for t in (self.spec.prompt(self.data.train[i]) for i in self.holdout)
                                  if t not in everyone))
        k = min(self.scenario.probe.members, len(trained), len(held))
        gen = rng(self.seed, "members")
        members = [trained[i] for i in gen.permutation(len(trained))[:k]]
        outsiders = [held[i] for i in gen.permutation(len(held))[:k]]
        pool = [(t, True) for t in members] + [(t, False) for t in outsiders]
        pool = [pool[i] for i in gen.permutation(len(pool))]
        train = self.scenario.train
        view = attacker_view(self.defense.server, self.channel.transcript, client, rnd, "upload", self.public,
                             candidates=[t for t, _ in pool], local_steps=train.local_steps, lr=train.lr,
                             batch_size=train.batch_size)
        return view, [m for _, m in pool]

    def run(self) -> SimulationResult:
        t0 = time.perf_counter()
        setup_costs = setup_roles(self.defense, self.fed, self.channel)
        setup_s = setup_costs.pop("setup_s")
        rounds, probe, probe_s = [], None, 0.0
        target = self.clients[probe_target(self.scenario, self.seed)]
        for rnd in range(1, self.scenario.rounds + 1):
            if rnd == self.scenario.threat.round:
                self.probe_start = self.start_factors(target, rnd)
            self.progress(f"round {rnd}/{self.scenario.rounds}")
            rounds.append(self.run_round(rnd))
            if rnd == self.scenario.threat.round:
                t_probe = time.perf_counter()
                probe = self.probe(rnd)
                probe_s = time.perf_counter() - t_probe
        t_eval = time.perf_counter()
        utility = self.evaluate()
        eval_s = time.perf_counter() - t_eval
        metrics: dict[str, Any] = {
            **utility, **self.meter.summary(),
            **{k: mean_or_none(v) for k, v in self.timings.items()},
            "agg_rel_err": max(r["agg_rel_err"] for r in rounds),
            "setup_s": setup_s, "setup_costs": setup_costs, "sim_s": time.perf_counter() - t0,
            "model_load_s": self.loaded.load_s, "final_train_loss": rounds[-1]["train_loss"],
            "eval_s": eval_s, "probe_s": probe_s,
            "time_breakdown": {"model_load_s": self.loaded.load_s, "setup_s": setup_s, "eval_s": eval_s, "probe_s": probe_s,
                               **{k.replace("_s", "_total_s"): sum(v or 0.0 for v in vals) for k, vals in self.timings.items()},
                               "sim_s": time.perf_counter() - t0},
            "per_tier": summarize_tiers(self.per_tier, self.clients),
            "flexlora_broadcast_bytes": flexlora_broadcast_bytes(self.fed),
        }
        if probe is not None and probe.probe_view is not None:
            metrics["start_known"] = probe.probe_view.start_known
            metrics["server_saw"] = describe_upload(probe.probe_view)
        return SimulationResult(metrics, rounds, probe, self.loaded.tokenizer)


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


def _content_key(deltas: dict[str, Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(deltas):
        t = deltas[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _detached_copy(model: torch.nn.Module) -> torch.nn.Module:
    # Unwrap peft layers: the merged weights are in the base layers; adapters must not travel along.
    from peft.tuners.lora import LoraLayer

    # Only the adapted modules (merged weights) and the head are copied; the frozen rest is shared.
    adapted = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, LoraLayer))
    clone = shared_copy(model, lambda name: is_head(name) or name.startswith(adapted))

    for name, module in list(clone.named_modules()):
        if isinstance(module, LoraLayer):
            parent_name, _, child = name.rpartition(".")
            parent = clone.get_submodule(parent_name) if parent_name else clone
            setattr(parent, child, module.get_base_layer())
    clone.eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def simulate(scenario: ScenarioConfig, defense: Defense, seed: int, device: str = "cpu",
             progress: Callable[[str], None] | None = None) -> SimulationResult:
    fed = Federation(scenario, defense, seed, device, progress)
    try:
        return fed.run()
    finally:
        # fed.public builds models through a bound method of fed: without this cycle break the host
        # model (hundreds of MB) lives on until the cyclic GC runs, overlapping the next simulation.
        fed.public = None


__all__ = ["simulate", "Federation", "SimulationResult", "ProbeResult", "derive"]
