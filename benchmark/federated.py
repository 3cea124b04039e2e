"""The embedded engine: every client in one process, one after another.

One call simulates a whole federation for one defense, scenario and seed, runs the attack probe at
the configured round, evaluates the final global model, and hands back measurements plus the
attacker views. Defenses and attacks never see this module; they only see the api contracts.
"""

from __future__ import annotations

import dataclasses
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
from benchmark.lora import LoRAHost
from benchmark.models import LoadedModel, load_model
from benchmark.seeding import derive, rng, seed_everything, torch_generator
from benchmark.train import LocalResult, TaskSpec, encode, evaluate, local_train, to_device
from benchmark.wire import WireMeter
from she_lora.lowrank import FactoredDelta, aggregate_lowrank, relative_error, to_lora


@dataclass
class ProbeResult:
    """What the attacks get (views) and what only the harness keeps (the truth)."""

    probe_view: AttackerView
    round_view: AttackerView | None
    references: list[str]  # the probe batch as the model saw it
    candidates_are_members: list[bool]


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
    """State of one simulated federation: model host, clients, data shards, the latest broadcast."""

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
        targets = scenario.lora.target_modules or self.loaded.default_targets
        self.host = LoRAHost(self.loaded.fresh_copy().to(device), [c.rank for c in self.clients], scenario.lora.alpha,
                             tuple(targets), scenario.lora.dropout)
        self.spec = TaskSpec(scenario.task, self.loaded.arch, scenario.data.template, self.data.label_names,
                             scenario.train.seq_len)
        self.fed = FederationInfo(self.clients, self.host.module_shapes, scenario.rounds, scenario.clients_per_round,
                                  seed, device)
        self.message: WirePayload | None = None
        self.start: dict[int, dict[str, LoRAFactors]] = {}
        self.head: dict[str, Tensor] = {n: p.detach().cpu().clone() for n, p in self.host.head_parameters().items()}
        self.meter = WireMeter()
        self.timings: dict[str, list[float]] = {"enc_s": [], "dec_s": [], "agg_s": [], "train_s": []}
        self.per_tier: dict[str, dict[str, list[float]]] = {}

    def client_examples(self, cid: int) -> list[Example]:
        return [self.data.train[i] for i in self.shards[cid]]

    def start_factors(self, client: ClientInfo) -> dict[str, LoRAFactors]:
        if client.client_id in self.start:
            return self.start[client.client_id]
        if self.message is None:
            return self.host.init_factors(client.rank, torch_generator(self.seed, "init", client.client_id))
        return self.finalize(client)

    def finalize(self, client: ClientInfo) -> dict[str, LoRAFactors]:
        t0 = time.perf_counter()
        factors = self.defense.finalize(self.message, client)
        self.timings["dec_s"].append(time.perf_counter() - t0)
        self.start[client.client_id] = factors
        return factors

    def train_client(self, client: ClientInfo, rnd: int) -> LocalResult:
        wrap = getattr(self.defense, "wrap_training", None)
        result = local_train(
            self.host, client, self.start_factors(client), self.client_examples(client.client_id),
            len(self.shards[client.client_id]), self.spec, self.scenario.train, self.loaded.tokenizer,
            torch_generator(self.seed, "batches", rnd, client.client_id), rnd, self.device, self.head, wrap,
        )
        self.timings["train_s"].append(result.train_s)
        return result

    def run_round(self, rnd: int) -> dict[str, Any]:
        picks = sample_round(self.scenario, self.seed, rnd)
        results = {cid: self.train_client(self.clients[cid], rnd) for cid in picks}
        updates = [results[cid].update for cid in picks]
        negotiate = getattr(self.defense, "negotiate", None)
        if negotiate is not None:
            for msg in negotiate(updates) or []:
                self.meter.side_channel(msg)
        payloads = []
        for u in updates:
            p = self.meter.send_up(self.defense.protect(u))
            self.timings["enc_s"].append(p.timings.get("enc_s", 0.0))
            tier = self.per_tier.setdefault(u.client.tier, {"bytes_up": [], "cipher_bytes_up": [], "enc_s": []})
            tier["bytes_up"].append(p.nbytes())
            tier["cipher_bytes_up"].append(p.cipher_bytes())
            tier["enc_s"].append(p.timings.get("enc_s", 0.0))
            payloads.append(p)
        t0 = time.perf_counter()
        self.message = self.defense.aggregate(payloads)
        agg_s = self.message.timings.get("agg_s", time.perf_counter() - t0)
        self.timings["agg_s"].append(agg_s)
        self.meter.send_down(self.message, len(picks))
        self._average_head([results[cid] for cid in picks])
        self.start = {}
        reference = reference_aggregate(updates)
        err = max(aggregation_error(self.finalize(self.clients[cid]), reference, self.clients[cid]) for cid in picks)
        self.last_round = {"picks": picks, "results": results, "payloads": dict(zip(picks, payloads))}
        loss = sum(r.loss for r in results.values()) / len(results)
        return {"round": rnd, "clients": picks, "train_loss": loss, "agg_s": agg_s, "agg_rel_err": err,
                "bytes_up": sum(p.nbytes() for p in payloads), "bytes_down": self.message.nbytes() * len(picks)}

    def _average_head(self, results: list[LocalResult]) -> None:
        """Encoder heads are averaged in the clear (FedAvg) under every defense, as in the paper."""
        if not self.head:
            return
        total = sum(r.update.n_samples for r in results)
        self.head = {n: sum(r.head[n] * (r.update.n_samples / total) for r in results) for n in self.head}
        self.meter.up[-len(results):] = [b + sum(t.numel() * 4 for t in self.head.values()) for b in self.meter.up[-len(results):]]

    def global_deltas(self) -> dict[str, Tensor]:
        """The global model as the most capable client reconstructs it from the last broadcast."""
        if self.message is None:
            return {}
        best = max(self.clients, key=lambda c: c.rank)
        factors = self.defense.finalize(self.message, best)
        return {n: f.delta() for n, f in factors.items()}

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            for n, p in self.host.head_parameters().items():
                p.copy_(self.head[n])
        with self.host.merged(self.global_deltas()) as model:
            return evaluate(model, self.loaded.tokenizer, self.spec, self.data.test, device=self.device)

    # ----------------------------------------------------------------------------------------
    # The attack probe.

    def public_model(self, deltas: dict[str, Tensor]) -> torch.nn.Module:
        """A copy of the base model with the previous global delta merged: what the server can build."""
        with self.host.merged(deltas) as model:
            return _detached_copy(model.get_base_model())

    def probe(self, rnd: int) -> ProbeResult:
        """The target client computes its update on one private batch; the defense protects it; the
        views are built by the defense's ``observe`` alone; the true texts stay here."""
        cfg = self.scenario.threat
        client = self.clients[probe_target(self.scenario, self.seed)]
        start = self.probe_start
        examples = self.client_examples(client.client_id)
        order = rng(self.seed, "probe").permutation(len(examples)).tolist()
        batch_ex = [examples[i] for i in order[: cfg.batch_size]]
        batch = to_device(encode(self.loaded.tokenizer, self.spec, batch_ex), self.device)
        self.host.use(client.rank)
        self.host.set_factors(client.rank, start)
        model = self.host.model
        model.train()
        sums: dict[str, Tensor] = {}
        params = self.host.lora_parameters(client.rank)
        wrap = getattr(self.defense, "wrap_training", None)
        grad_mode = cfg.observation == "grad"
        # Under a defense that changes training (DP-SGD), the observed gradient is what its optimizer
        # applies: one plain SGD step at lr=1 from the start point, read back as start - after.
        if grad_mode:
            opt = torch.optim.SGD(params, lr=1.0)
        else:
            opt = torch.optim.SGD(params, lr=cfg.lr) if cfg.observation == "sgd" else torch.optim.AdamW(params, lr=cfg.lr)
        steps = 1 if grad_mode else cfg.steps
        loader: Any = [batch] * steps
        if wrap is not None:
            model, opt, loader = wrap(model, opt, loader, client)
        for _, step_batch in zip(range(steps), loader):
            step_batch = to_device(step_batch, self.device)
            opt.zero_grad(set_to_none=True)
            with self.host.input_norm_hooks(sums, [step_batch["attention_mask"]]):
                loss = model(**step_batch).loss
            loss.backward()
            if not grad_mode or wrap is not None:
                opt.step()
        self.host.model.eval()
        release = getattr(self.defense, "release", None)
        if release is not None:
            release()
        if grad_mode and wrap is not None:
            after = self.host.get_factors(client.rank)
            factors = {n: LoRAFactors(start[n].A - after[n].A, start[n].B - after[n].B, after[n].scale) for n in after}
        elif grad_mode:
            factors = self.host.get_grads(client.rank)
        else:
            factors = self.host.get_factors(client.rank)
        update = ClientUpdate(client, rnd, factors, len(self.shards[client.client_id]), sums, None, start, cfg.observation)
        payload = self.defense.protect(update)
        prev_deltas = {n: f.delta() for n, f in start.items()}
        public = self.public_model(prev_deltas)
        grant = {
            "prev": {n: LoRAFactors(f.A.clone(), f.B.clone(), f.scale) for n, f in start.items()},
            "model": public, "tokenizer": self.loaded.tokenizer, "task": self.scenario.task,
            "template": self.scenario.data.template,
        }
        probe_view = on_device(dataclasses.replace(self.defense.observe(payload), lr=cfg.lr, local_steps=steps,
                                                   batch_size=cfg.batch_size, **grant), self.device)
        references = [self.loaded.tokenizer.decode(ids[m.bool()], skip_special_tokens=True)
                      for ids, m in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu())]
        round_view, is_member = self._round_view(client, grant)
        return ProbeResult(probe_view, round_view, references, is_member)

    def _round_view(self, client: ClientInfo, grant: dict[str, Any]) -> tuple[AttackerView | None, list[bool]]:
        """The target's real upload of the probe round, with membership candidates."""
        payload = self.last_round["payloads"].get(client.client_id)
        if payload is None:
            return None, []
        trained = list(dict.fromkeys(self.last_round["results"][client.client_id].texts))
        k = min(self.scenario.probe.members, len(trained), len(self.data.test))
        gen = rng(self.seed, "members")
        members = [trained[i] for i in gen.permutation(len(trained))[:k]]
        outsiders = [self.spec.prompt(self.data.test[i]) for i in gen.permutation(len(self.data.test))[:k]]
        pool = [(t, True) for t in members] + [(t, False) for t in outsiders]
        pool = [pool[i] for i in gen.permutation(len(pool))]
        view = on_device(dataclasses.replace(self.defense.observe(payload), **grant, candidates=[t for t, _ in pool],
                                             local_steps=self.scenario.train.local_steps, lr=self.scenario.train.lr),
                         self.device)
        return view, [m for _, m in pool]

    def run(self) -> SimulationResult:
        t0 = time.perf_counter()
        setup_t = time.perf_counter()
        setup_costs = self.defense.setup(self.fed) or {}
        setup_s = time.perf_counter() - setup_t
        rounds, probe = [], None
        for rnd in range(1, self.scenario.rounds + 1):
            if rnd == self.scenario.threat.round:
                self.probe_start = self.start_factors(self.clients[probe_target(self.scenario, self.seed)])
            self.progress(f"round {rnd}/{self.scenario.rounds}")
            rounds.append(self.run_round(rnd))
            if rnd == self.scenario.threat.round:
                probe = self.probe(rnd)
        utility = self.evaluate()
        metrics: dict[str, Any] = {
            **utility, **self.meter.summary(),
            **{k: (sum(v) / len(v) if v else 0.0) for k, v in self.timings.items()},
            "agg_rel_err": max(r["agg_rel_err"] for r in rounds),
            "setup_s": setup_s, "setup_costs": setup_costs, "sim_s": time.perf_counter() - t0,
            "model_load_s": self.loaded.load_s, "final_train_loss": rounds[-1]["train_loss"],
            "per_tier": summarize_tiers(self.per_tier, self.clients),
        }
        return SimulationResult(metrics, rounds, probe, self.loaded.tokenizer)


def on_device(view: AttackerView, device: str) -> AttackerView:
    """Put the view's tensors where the public model lives, so attacks need no device bookkeeping."""

    def move(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(device)

    modules = {
        n: dataclasses.replace(m, A=move(m.A), B=move(m.B), A_hidden=move(m.A_hidden), B_hidden=move(m.B_hidden))
        for n, m in view.modules.items()
    }
    prev = None if view.prev is None else {n: LoRAFactors(f.A.to(device), f.B.to(device), f.scale) for n, f in view.prev.items()}
    return dataclasses.replace(view, modules=modules, prev=prev)


def summarize_tiers(per_tier: dict[str, dict[str, list[float]]], clients: Sequence[ClientInfo]) -> dict[str, dict]:
    """Mean upload cost per client-round in each device tier, with the tier's rank and budget."""
    info = {c.tier: c for c in clients}
    return {
        tier: {"rank": info[tier].rank, "budget": info[tier].budget,
               **{k: sum(v) / len(v) for k, v in values.items() if v}}
        for tier, values in sorted(per_tier.items(), key=lambda kv: info[kv[0]].rank)
    }


def _detached_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    clone = copy.deepcopy(model)
    # Unwrap peft layers: the merged weights are in the base layers; adapters must not travel along.
    from peft.tuners.lora import LoraLayer

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
    return Federation(scenario, defense, seed, device, progress).run()


__all__ = ["simulate", "Federation", "SimulationResult", "ProbeResult", "derive"]
