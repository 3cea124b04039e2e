"""Shared helpers of the asv suite: seeding, skip-on-missing imports, and small seeded inputs.

Why a module of its own: every benchmark must start from the same RNG state and the same thread count
(timings on a shared 2-core machine drift with thread contention), and every benchmark must skip, not
fail, on a commit where the module it measures does not exist yet.

The heavy third-party imports happen here at import time on purpose: asv's forkserver imports the suite
once and forks a process per benchmark, so they are paid once per run instead of once per benchmark.
Project modules are only imported through ``need`` inside ``setup``.
"""

from __future__ import annotations

import importlib
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch

for _heavy in ("tenseal", "transformers", "peft"):  # warm the forkserver; absence is handled in setup
    try:
        importlib.import_module(_heavy)
    except Exception:  # an optional dependency may be missing or broken
        pass

SEED = 0
# Changing any constant below changes what the benchmarks measure: bump the ``version`` of the classes
# that use it, or the history breaks silently.
SHAPES = {"layers.0.q_proj": (256, 256), "layers.0.v_proj": (256, 256)}
COST_DEFENSES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("plain_lora", "plain_lora", {}),
    ("she_lora_server_lift", "she_lora", {"lift": "server_lift"}),
    ("she_lora_client_lift", "she_lora", {"lift": "client_lift"}),
    ("full_he_dense", "full_he", {"packing": "dense"}),
    ("full_he_per_column", "full_he", {"packing": "per_column"}),
    ("maskcrypt", "maskcrypt", {}),
)


def seed_all(seed: int = SEED) -> None:
    """Same RNG state and one torch thread for every benchmark (stable timings, modest CPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(int(os.environ.get("SHEBENCH_ASV_THREADS", "1")))


_MEMO: dict[Any, Any] = {}


def memo(key: Any, build: Callable[[], Any]) -> Any:
    """Build once per benchmark process. asv re-runs ``setup`` before every timed call (fresh state per
    sample); state that the timed call does not consume, such as a set-up defense with its keys, would
    otherwise be rebuilt for every sample of a sub-millisecond operation."""
    if key not in _MEMO:
        _MEMO[key] = build()
    return _MEMO[key]


def need(module: str) -> ModuleType:
    """Import a project module or skip the benchmark: asv treats ``NotImplementedError`` in setup as a skip."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # a half-written module must skip, not fail, the suite
        raise NotImplementedError(f"{module} is not importable at this commit: {type(exc).__name__}: {exc}") from exc


def need_any(*modules: str) -> ModuleType:
    """The first of ``modules`` that imports (a module that moved: its new home first), or a skip."""
    for module in modules[:-1]:
        try:
            return importlib.import_module(module)
        except Exception:  # not at this commit: try where it lived before
            continue
    return need(modules[-1])


def make_defense(name: str, params: Mapping[str, Any] | None = None) -> Any:
    """A registered defense with the given parameters, or a skip when it does not exist (yet)."""
    registry = need("defenses").DEFENSES
    try:
        cls = registry.get(name)
    except Exception as exc:  # unregistered or its module is missing
        raise NotImplementedError(f"defense {name!r} is not available at this commit: {exc}") from exc
    try:  # since wrappers (dp, dp_sgd) exist, every defense is built through its stack
        return need_any("benchmark.contract.stacks", "benchmark.stacks").build_defense(name, params, registry)
    except ModuleNotFoundError:
        config = need("benchmark.config")
        return cls(config.params_from_dict(cls.Params, dict(params or {}), f"defense.{name}"))


def federation(ranks: Sequence[int], budgets: Sequence[float], shapes: Mapping[str, tuple[int, int]] = SHAPES,
               alpha: float = 16.0) -> Any:
    """A ``FederationInfo`` with one client per (rank, budget), all taking part in one round."""
    api = need_any("benchmark.contract", "benchmark.api")
    clients = tuple(api.ClientInfo(i, f"r{r}", r, b, alpha) for i, (r, b) in enumerate(zip(ranks, budgets)))
    return api.FederationInfo(clients, dict(shapes), 1, len(clients), SEED)


def random_updates(fed: Any, rnd: int = 1) -> list[Any]:
    """Seeded random client updates of the federation's shapes, built like the cost scenarios' ones."""
    cost = need_any("benchmark.engines.cost", "benchmark.cost")
    gen = torch.Generator().manual_seed(SEED)
    return [cost.random_update(c, dict(fed.module_shapes), gen, rnd) for c in fed.clients]


def cost_scenario(n_clients: int = 2, dim: int = 64, ranks: Sequence[int] = (4, 8),
                  budgets: Sequence[float] = (0.05, 0.1)) -> Any:
    """A tiny shapes-only cost scenario: one layer, q_proj and v_proj of dim x dim, one round."""
    config = need("benchmark.config")
    tiers = [{"name": f"r{r}", "fraction": 1.0 / len(ranks), "rank": r, "budget": b} for r, b in zip(ranks, budgets)]
    return config.scenario_from_dict({
        "name": "asv_cost", "kind": "cost", "n_clients": n_clients, "clients_per_round": n_clients, "rounds": 1,
        "tiers": tiers, "cost": {"layers": 1, "modules": ["q_proj", "v_proj"], "out_features": dim,
                                 "in_features": dim, "repeats": 1},
    })


def tiny_scenario(overrides: Mapping[str, Any] | None = None) -> Any:
    """The repository's tiny scenario (random-init 2-layer Llama, synthetic sentences, four clients)."""
    runner = need_any("benchmark.running", "benchmark.runner")
    return runner.resolve_scenario("tiny", dict(overrides or {}))


class Bench:
    """Timing defaults sized for a 2-core machine: a whole ``asv run`` of one commit stays within minutes.

    ``timer`` is the process's CPU time, not wall time: on a machine shared with other jobs, wall time
    of a single-threaded call swings by 50% or more with the neighbours' load (asv then reports steps
    that no commit caused), while its CPU time stays within a few percent. Every measured path is
    single-threaded (one torch thread, SEAL, ``n_workers=1``), so CPU time is the time it costs.
    """

    timer = time.process_time
    rounds = 2
    repeat = (1, 5, 4.0)
    warmup_time = 0.05
    timeout = 180


class Steps:
    """One round's steps on a defense, whichever API the checked-out commit has: the client and
    server roles over a channel (``defense.client`` / ``defense.server``, ``benchmark.federation.protocol``),
    or the single defense object of earlier commits. History stays comparable across the change."""

    def __init__(self, defense: Any) -> None:
        self.defense = defense
        self.roles = hasattr(defense, "client") and hasattr(defense, "server")
        if self.roles:
            transcript = need_any("benchmark.federation.transcript", "benchmark.transcript")
            self.copy = transcript.wire_copy
            self.channel = transcript.Channel()

    def setup(self, fed: Any) -> Any:
        if not self.roles:
            return self.defense.setup(fed)
        return need_any("benchmark.federation.protocol", "benchmark.protocol").setup_roles(self.defense, fed, self.channel)

    def negotiate(self, updates: Any) -> None:
        if self.roles:
            need_any("benchmark.federation.protocol", "benchmark.protocol").negotiate(self.defense, updates, updates[0].round, self.channel)
        elif hasattr(self.defense, "negotiate"):
            self.defense.negotiate(updates)

    def protect(self, update: Any) -> Any:
        return (self.defense.client if self.roles else self.defense).protect(update)

    def aggregate(self, payloads: Any) -> Any:
        if not self.roles:
            return self.defense.aggregate(payloads)
        return self.defense.server.aggregate([self.copy(p) for p in payloads])

    def finalize(self, message: Any, client: Any) -> Any:
        """A fresh copy per call on the roles API: a client decrypts each broadcast it receives once
        (cached), so timing the same object twice would time the cache."""
        if not self.roles:
            return self.defense.finalize(message, client)
        return self.defense.client.finalize(self.copy(message), client)
