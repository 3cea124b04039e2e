"""Who the clients are and who takes part when: public facts both the driver and the nodes derive
from the scenario and the seed alone, so no process has to ask another for them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmark.config import ScenarioConfig
from benchmark.contract import ClientInfo
from benchmark.federation.data import assign_tiers
from benchmark.federation.seeding import rng


def make_clients(scenario: ScenarioConfig, seed: int) -> tuple[ClientInfo, ...]:
    """Every client with its tier, rank and budget (tiers assigned from the seed)."""
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
    """The attack probe's target client: as configured, or (-1) a client of the top rank drawn from the
    seed, so that seeds are independent replicates (each its own partition, start and target)."""
    if scenario.probe.client >= 0:
        return scenario.probe.client
    clients = make_clients(scenario, seed)
    top = max(c.rank for c in clients)
    candidates = [c.client_id for c in clients if c.rank == top]
    return int(candidates[int(rng(seed, "probe-target").integers(len(candidates)))])


def sample_round(scenario: ScenarioConfig, seed: int, rnd: int) -> list[int]:
    """The round's participants; the probe's target always takes part in the probe round."""
    picks = rng(seed, "sampling", rnd).choice(scenario.n_clients, scenario.clients_per_round, replace=False).tolist()
    target = probe_target(scenario, seed)
    if rnd == scenario.threat.round and target not in picks:
        picks[-1] = target
    return sorted(picks)


@dataclass(frozen=True)
class Schedule:
    """How many rounds the driver runs, who takes part in each, and which client it probes when
    (``probe_round`` None: no probe). A cost run measures fixed participants and never probes."""

    rounds: int
    picks: Callable[[int], list[int]]
    probe_round: int | None = None
    probe_client: int = 0

    @classmethod
    def sampled(cls, scenario: ScenarioConfig, seed: int) -> Schedule:
        """The federated schedule: seeded sampling each round, the probe at the threat's round."""
        return cls(scenario.rounds, lambda rnd: sample_round(scenario, seed, rnd), scenario.threat.round,
                   probe_target(scenario, seed))
