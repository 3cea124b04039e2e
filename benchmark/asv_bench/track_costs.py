"""Wire cost and aggregation exactness per defense on a small shapes-only scenario (the cost engine).

scipy's ``track_all`` pattern: ``setup_cache`` runs every defense's round once (one process, one
seed) and each ``track_`` method returns one number of it. All are lower-is-better, which is the
direction asv's regression detection assumes. A defense missing at a commit is skipped, not failed.
"""

from __future__ import annotations

from typing import Any

from .common import COST_DEFENSES, Bench, cost_scenario, make_defense, need_any, seed_all

LABELS = [label for label, _, _ in COST_DEFENSES]


def _simulate_all() -> dict[str, Any]:
    seed_all()
    cost = need_any("benchmark.engines.cost", "benchmark.cost")
    simulate = getattr(cost, "simulate", None) or cost.simulate_cost  # renamed when it joined the engines
    scenario = cost_scenario()
    out: dict[str, Any] = {}
    for label, name, params in COST_DEFENSES:
        try:
            defense = make_defense(name, params)
        except NotImplementedError as exc:
            out[label] = str(exc)
            continue
        out[label] = dict(simulate(scenario, defense, 0).metrics)
    return out


class WireCost(Bench):
    """Bytes per client-round up and down, and the aggregate's relative error, per defense label."""

    version = "1"
    params = [LABELS]
    param_names = ["defense"]
    timeout = 600

    def setup_cache(self) -> dict[str, Any]:
        return _simulate_all()

    def setup(self, cache: dict[str, Any], defense: str) -> None:
        if not isinstance(cache.get(defense), dict):
            raise NotImplementedError(cache.get(defense, f"{defense} was not simulated"))

    def track_bytes_up(self, cache: dict[str, Any], defense: str) -> float:
        return float(cache[defense]["bytes_up_per_client_round"])

    def track_bytes_down(self, cache: dict[str, Any], defense: str) -> float:
        return float(cache[defense]["bytes_down_per_client_round"])

    def track_agg_rel_err(self, cache: dict[str, Any], defense: str) -> float:
        return float(cache[defense]["agg_rel_err"])

    track_bytes_up.unit = "bytes"  # type: ignore[attr-defined]
    track_bytes_down.unit = "bytes"  # type: ignore[attr-defined]
    track_agg_rel_err.unit = "relative error"  # type: ignore[attr-defined]
