"""The ``inproc`` engine: every client in this process, one after another.

The driver's endpoint is a ``ClientNode`` hosting every client with the defense's client role; the
referee and the node share one ``Assets`` (one model, one LoRA host), as one process holds one copy.
Messages still cross the driver's ``Channel``: metered, recorded in the server's transcript, copied.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmark.config import ScenarioConfig
from benchmark.contract import Defense
from benchmark.federation.assets import build_assets
from benchmark.federation.driver import RoundDriver, SimulationResult
from benchmark.federation.node import ClientNode
from benchmark.federation.referee import ModelReferee
from benchmark.federation.sampling import Schedule


def build_driver(scenario: ScenarioConfig, defense: Defense, seed: int, device: str = "cpu",
                 progress: Callable[[str], None] | None = None) -> RoundDriver:
    """The driver of one in-process federation, ready to run (tests read its channel and referee)."""
    assets = build_assets(scenario, seed, device)
    node = ClientNode(defense.client, lambda: assets)
    referee = ModelReferee(assets, defense.secret_sum(scenario.clients_per_round))
    return RoundDriver(assets.fed, defense.server, node, referee, Schedule.sampled(scenario, seed), progress)


def simulate(scenario: ScenarioConfig, defense: Defense, seed: int, device: str = "cpu",
             progress: Callable[[str], None] | None = None) -> SimulationResult:
    """One federation for one defense, scenario and seed, in this process."""
    return build_driver(scenario, defense, seed, device, progress).run()
