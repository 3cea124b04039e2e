"""An engine is one registry line: a toy engine, registered here, runs the tiny scenario through the
normal runner path (plan, execute) with the same round driver, and gives inproc's rows."""

from __future__ import annotations

import dataclasses
import pickle
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from benchmark.config import ComponentSpec, ScenarioConfig
from benchmark.contract import Defense
from benchmark.engines import ENGINES
from benchmark.federation.assets import build_assets
from benchmark.federation.driver import RoundDriver, SimulationResult
from benchmark.federation.node import ClientNode
from benchmark.federation.referee import ModelReferee
from benchmark.federation.sampling import Schedule
from benchmark.running import Overrides, execute, plan, resolve_suite

DEFENSES = ("plain_lora", "she_lora")
ATTACKS = ("token_leak", "mia")
SAME = ("utility", "eval_loss", "final_train_loss", "bytes_up_per_client_round", "bytes_down_per_client_round",
        "setup_bytes", "cipher_bytes_up", "cipher_bytes_down", "start_known", "server_saw", "status", "rouge1",
        "token_recall", "n_reconstructed", "mia_auc", "tpr_at_5fpr", "probe_rank", "epsilon", "encrypted_fraction")
CALLS: Counter[str] = Counter()


class PickledClients:
    """A ``ClientEndpoint`` that reaches an in-process ``ClientNode`` as a transport would: every
    argument and every reply is pickled and rebuilt (no object is shared with the driver), and each
    call is counted."""

    def __init__(self, node: ClientNode) -> None:
        self.node = node

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.node, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            CALLS[name] += 1
            args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
            return pickle.loads(pickle.dumps(method(*args, **kwargs)))

        return call


def simulate(scenario: ScenarioConfig, defense: Defense, seed: int, device: str = "cpu",
             progress: Callable[[str], None] | None = None) -> SimulationResult:
    assets = build_assets(scenario, seed, device)
    clients = PickledClients(ClientNode(defense.client, lambda: assets))
    return RoundDriver(assets.fed, defense.server, clients, ModelReferee(assets), Schedule.sampled(scenario, seed),
                       progress).run()


@pytest.fixture
def pickled_engine() -> Iterator[Counter[str]]:
    ENGINES.register("pickled", simulate)
    CALLS.clear()
    try:
        yield CALLS
    finally:
        ENGINES.unregister("pickled")


def tiny_rows(tmp_path, engine: str) -> dict[tuple[str, str], dict[str, Any]]:
    suite = dataclasses.replace(resolve_suite("smoke"), defenses=tuple(ComponentSpec(d, d) for d in DEFENSES),
                                attacks=tuple(ComponentSpec(a, a) for a in ATTACKS), attack_modes=("naive",),
                                engine=engine)
    rows = execute(plan(suite, Overrides({}, {}, {})), tmp_path / engine, "cpu", quiet=True)
    return {(r["defense"], r["attack"]): r for r in rows}


def test_a_registered_engine_runs_through_the_runner_and_matches_inproc(tmp_path, pickled_engine):
    ref, got = tiny_rows(tmp_path, "inproc"), tiny_rows(tmp_path, "pickled")
    assert set(ref) == set(got) == {(d, a) for d in DEFENSES for a in ATTACKS}
    for cell, want in ref.items():
        row = got[cell]
        assert row["status"] == "ok" and row["engine"] == "pickled", row.get("error")
        for col in SAME:
            assert row[col] == want[col], f"{cell} {col}: pickled {row[col]!r} != inproc {want[col]!r}"
    # the toy's endpoint carried every client call: 2 defenses x 2 rounds, each round's 2 clients
    # trained in one phase call (``train_many``), etc.
    assert pickled_engine["train_many"] == 4 and pickled_engine["protect_many"] == 4
    assert pickled_engine["setup"] == 2 and pickled_engine["probe_update"] >= 2 and pickled_engine["finalize_many"] >= 4


def test_registration_does_not_leak():
    assert "pickled" not in ENGINES
