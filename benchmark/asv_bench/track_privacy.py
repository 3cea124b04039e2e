"""Privacy and utility on the tiny scenario (probe on a rank-16 client): DAGER's ROUGE-1 against each defense (naive and adaptive
attacker) and the accuracy the defense costs against plain_lora.

Oriented lower-is-better like every tracked value here: ROUGE-1 measures the attacker, and the accuracy
gap is plain_lora's accuracy minus the defense's. ``setup_cache`` simulates each federation once and
runs the attacks on its probe; a value a commit cannot produce (defense, attack or metrics module
missing, or an attack the defense's view rules out) is skipped, not failed.
"""

from __future__ import annotations

from typing import Any

from .common import Bench, make_defense, need, need_any, seed_all, tiny_scenario

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # older asv_runner: a plain NotImplementedError still reads as a skip in setup
    SkipNotImplemented = NotImplementedError  # type: ignore[misc,assignment]

DEFENSES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("she_lora", "she_lora", {}),
    ("maskcrypt", "maskcrypt", {}),
    ("dp", "dp", {}),
    ("full_he", "full_he", {}),
)
MODES = ("naive", "adaptive")


def _scenario() -> Any:
    """tiny, with the probe on its first highest-rank client: at rank 4 the span of one sentence's
    tokens already fills the adapter and DAGER has nothing to single out, for every defense alike."""
    sampling = need_any("benchmark.federation.sampling", "benchmark.federated")
    clients = sampling.make_clients(tiny_scenario(), 0)
    target = max(clients, key=lambda c: (c.rank, -c.client_id))
    return tiny_scenario({"probe": {"client": target.client_id}})


def _simulate(name: str, params: dict[str, Any]) -> Any:
    seed_all()
    engine = need_any("benchmark.engines.inproc", "benchmark.federated")
    return engine.simulate(_scenario(), make_defense(name, params), 0)


def _dager(sim: Any, mode: str) -> float | str:
    try:
        runner = need_any("benchmark.running", "benchmark.runner")
        need_any("benchmark.running.metrics", "benchmark.metrics")
        need("attacks.dager")
        row = runner.run_attack(need("benchmark.config").ComponentSpec("dager", "dager", {}), mode, sim)
    except NotImplementedError as exc:
        return str(exc)
    if row.get("status") != "ok" or row.get("rouge1") is None:
        return f"dager/{mode}: {row.get('status')} ({row.get('attack_note', '')})"
    return float(row["rouge1"])


def _run_all() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    try:
        plain = _simulate("plain_lora", {}).metrics["utility"]
    except NotImplementedError as exc:
        return {label: {"error": str(exc)} for label, _, _ in DEFENSES}
    for label, name, params in DEFENSES:
        try:
            sim = _simulate(name, params)
        except NotImplementedError as exc:
            out[label] = {"error": str(exc)}
            continue
        out[label] = {"acc_gap": float(plain - sim.metrics["utility"]), **{m: _dager(sim, m) for m in MODES}}
    return out


def _value(cache: dict[str, dict[str, Any]], defense: str, key: str) -> float:
    entry = cache.get(defense, {})
    value = entry.get(key, entry.get("error", f"{key} not computed"))
    if isinstance(value, str):
        raise SkipNotImplemented(value)
    return value


class TinyPrivacyUtility(Bench):
    """DAGER ROUGE-1 (naive, adaptive) and accuracy gap to plain_lora, per defense, tiny scenario, seed 0."""

    version = "1"
    params = [[label for label, _, _ in DEFENSES]]
    param_names = ["defense"]
    timeout = 900

    def setup_cache(self) -> dict[str, dict[str, Any]]:
        return _run_all()

    def setup(self, cache: dict[str, dict[str, Any]], defense: str) -> None:
        if "error" in cache.get(defense, {"error": ""}):
            raise NotImplementedError(cache.get(defense, {}).get("error", f"{defense} not simulated"))

    def track_dager_rouge1_naive(self, cache: dict[str, dict[str, Any]], defense: str) -> float:
        return _value(cache, defense, "naive")

    def track_dager_rouge1_adaptive(self, cache: dict[str, dict[str, Any]], defense: str) -> float:
        return _value(cache, defense, "adaptive")

    def track_acc_gap(self, cache: dict[str, dict[str, Any]], defense: str) -> float:
        return _value(cache, defense, "acc_gap")

    track_dager_rouge1_naive.unit = "ROUGE-1 F1"  # type: ignore[attr-defined]
    track_dager_rouge1_adaptive.unit = "ROUGE-1 F1"  # type: ignore[attr-defined]
    track_acc_gap.unit = "accuracy"  # type: ignore[attr-defined]
