"""What a process builds from a scenario and a seed before any message: data, shards, model, LoRA host.

The driver's referee (evaluation, public models, the probe's truth) and every client node build the
same ``Assets`` from the same public configuration; in process they share one. The steps run in a
fixed order after ``seed_everything`` (data, model, shards, host), because model loading and the LoRA
host's initialization draw from the global RNG: a node built this way trains on the same random
streams in every engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from benchmark.config import ScenarioConfig
from benchmark.contract import ClientInfo, FederationInfo
from benchmark.federation.data import Dataset, Example, load_dataset, partition
from benchmark.federation.lora import LoRAHost, trained_or_merged
from benchmark.federation.models import LoadedModel, load_model
from benchmark.federation.sampling import make_clients, probe_target, reserve_holdout
from benchmark.federation.seeding import seed_everything
from benchmark.federation.train import TaskSpec


@dataclass
class Assets:
    """One process's copy of the federation's data and model (the host's frozen weights shared with
    the loaded base model on CPU)."""

    scenario: ScenarioConfig
    seed: int
    device: str
    data: Dataset
    loaded: LoadedModel
    clients: tuple[ClientInfo, ...]
    shards: list[list[int]]
    holdout: list[int]
    host: LoRAHost
    spec: TaskSpec

    @property
    def fed(self) -> FederationInfo:
        s = self.scenario
        return FederationInfo(self.clients, self.host.module_shapes, s.rounds, s.clients_per_round, self.seed, self.device)

    def examples(self, cid: int) -> list[Example]:
        """Client ``cid``'s training shard (its holdout already taken out)."""
        return [self.data.train[i] for i in self.shards[cid]]

    def initial_head(self) -> dict[str, Tensor]:
        """An encoder's classification head as initialized (empty for decoders)."""
        return {n: p.detach().cpu().clone() for n, p in self.host.head_parameters().items()}


def build_assets(scenario: ScenarioConfig, seed: int, device: str = "cpu") -> Assets:
    """Seed, load the data and the model, split the data and hold out the probe's non-members, and
    wrap a copy of the model in a LoRA host with one adapter per tier rank."""
    seed_everything(seed)
    data = load_dataset(scenario.data, scenario.task, seed)
    loaded = load_model(scenario.model, scenario.task, max(2, len(data.label_names)))
    clients = make_clients(scenario, seed)
    shards = partition([ex.label for ex in data.train], scenario.n_clients, scenario.partition, seed)
    holdout = reserve_holdout(shards, probe_target(scenario, seed), scenario.probe.members, seed)
    targets = tuple(scenario.lora.target_modules or loaded.default_targets)
    # On CPU the host shares the frozen weights with the base (moving it to a device would move them too).
    base = loaded.fresh_copy(trained_or_merged(targets) if device == "cpu" else None)
    host = LoRAHost(base.to(device), [c.rank for c in clients], scenario.lora.alpha, targets, scenario.lora.dropout)
    spec = TaskSpec(scenario.task, loaded.arch, scenario.data.template, data.label_names, scenario.train.seq_len)
    return Assets(scenario, seed, device, data, loaded, clients, shards, holdout, host, spec)
