"""The scorecard: one row per defense, the strongest calibrated attack per threat setting, verdicts only
where the design carries them."""

import pandas as pd

from benchmark.contract.attack import Control
from benchmark.reporting.calibration import FAIL, PASS, Calibration, ControlResult
from benchmark.reporting.scorecard import MIN_CASES, MIN_SEEDS, common_batch, scorecard

DIRS = {"rouge1": True}
CONTROL = Control(scenario="paper", overrides={}, metric="rouge1", floor=0.5, why="test")


def rows(label, rouges, *, seeds=1, attack="dager", mode="naive", batch=4, scenario="r1", utility=0.7, status="ok",
         name=None, up=1e6):
    out = []
    for i, r in enumerate(rouges):
        out.append({"scenario": scenario, "defense": label, "defense_name": name or label, "defense_stack": name or label,
                    "attack": attack, "attack_name": attack, "attack_mode": mode, "seed": i % seeds, "status": status,
                    "rouge1": r if status == "ok" else None, "metric_directions": DIRS, "probe_batch_size": batch,
                    "probe_batch": i // seeds, "probe_round": 1, "observation": "grad", "threat_init": "server",
                    "utility": utility + 0.001 * (i % seeds), "utility_lo": utility - 0.04, "utility_hi": utility + 0.04,
                    "utility_n": 512, "bytes_up_per_client_round": up, "bytes_down_per_client_round": 2 * up,
                    "train_s": 1.0, "protect_s": 0.5, "dec_s": 0.25, "agg_s": 2.0})
    return out


def calibration(status=None):
    return Calibration(tuple(ControlResult(a, m, CONTROL, s) for (a, m), s in
                             {("dager", "naive"): PASS, ("dager", "adaptive"): PASS, **(status or {})}.items()))


def card(records, cal=None):
    table = scorecard(pd.DataFrame(records), cal or calibration())
    return {r["defense"]: r for r in table.to_dict("records")}


def column(table, prefix="privacy ↓ r1"):
    [title] = [k for k in next(iter(table.values())) if k.startswith(prefix)]
    return title


def test_one_row_per_defense_with_the_strongest_calibrated_mode_and_costs():
    table = card(rows("plain_lora", [1.0] * 6) + rows("she", [0.1] * 6) + rows("she", [0.6] * 6, mode="adaptive"))
    assert list(table) == ["plain_lora", "she"]
    title = column(table)
    assert title == "privacy ↓ r1: round 1 grad init=server, batch 4"
    assert table["she"][title].startswith("0.60 [0.00, 1.00] n=6 · dager/adaptive")  # one seed: no interval to speak of
    assert table["she"]["up / down per client-round ↓"] == "976.6 KiB / 1.9 MiB"
    assert table["she"]["client s ↓"] == "1.75" and table["she"]["server s ↓"] == "2"
    assert table["she"]["utility ↑ [95% CI]"] == "0.700 [0.660, 0.740] n=512"
    assert table["plain_lora"]["verdict vs plain LoRA"] == "(reference)"


def test_an_uncalibrated_mode_never_counts_as_the_strongest():
    records = rows("plain_lora", [1.0] * 6) + rows("she", [0.1] * 6) + rows("she", [0.9] * 6, mode="adaptive")
    table = card(records, calibration({("dager", "adaptive"): FAIL}))
    assert table["she"][column(table)].endswith("dager/naive")
    only = card(rows("plain_lora", [1.0] * 6, mode="adaptive"), calibration({("dager", "adaptive"): FAIL}))
    assert only["plain_lora"][column(only)] == "1.00 [0.00, 1.00] n=6 · dager/adaptive (uncalibrated)"


def test_abstentions_and_missing_settings_are_said_not_scored():
    records = (rows("plain_lora", [1.0] * 4) + rows("dp", [None] * 4, status="abstained")
               + rows("plain_lora", [0.5] * 3, scenario="r2"))
    table = card(records)
    assert table["dp"][column(table, "privacy ↓ r1")] == "abstained (4 of 4 cases)"
    assert table["dp"][column(table, "privacy ↓ r2")] == "not run"


def test_defenses_are_compared_at_one_batch_size():
    """The batch most defenses were probed at, whatever batch another defense scores highest at."""
    records = rows("plain_lora", [1.0] * 3, batch=4) + rows("she", [0.2] * 3, batch=4) + rows("she", [0.9] * 3, batch=1)
    assert common_batch(pd.DataFrame(records)) == 4
    table = card(records)
    assert column(table).endswith("batch 4") and table["she"][column(table)].startswith("0.20")


def test_a_verdict_needs_enough_cases_over_enough_seeds():
    n = MIN_CASES
    thin = card(rows("plain_lora", [1.0] * 6) + rows("she", [0.0] * 6))
    assert thin["she"]["verdict vs plain LoRA"].startswith("no verdict: 6 cases, 1 seed(s)")
    # seed means that vary (a seed draws its own partition, start and probe client)
    rich = card(rows("plain_lora", [0.8 + 0.04 * (i % 5) + 0.01 * (i % 3) for i in range(2 * n)], seeds=MIN_SEEDS)
                + rows("she", [0.02 * (i % 5) + 0.01 * (i % 2) for i in range(2 * n)], seeds=MIN_SEEDS, utility=0.5))
    verdict = rich["she"]["verdict vs plain LoRA"]
    assert "leaks less than plain LoRA (r1)" in verdict and "utility below plain LoRA" in verdict
    close = card(rows("plain_lora", [0.9, 1.0] * n, seeds=MIN_SEEDS) + rows("she", [0.85, 1.0] * n, seeds=MIN_SEEDS))
    assert close["she"]["verdict vs plain LoRA"] == "no verdict: intervals overlap"


def test_utility_is_compared_within_one_scenario_only():
    """A defense whose utility comes from another scenario than plain LoRA's gets no utility verdict."""
    n = MIN_CASES
    records = (rows("plain_lora", [1.0] * n, seeds=MIN_SEEDS, utility=0.9, scenario="a")
               + rows("dp", [0.0] * n, seeds=MIN_SEEDS, utility=0.3, scenario="b"))
    table = card(records)
    assert "utility" not in table["dp"]["verdict vs plain LoRA"]


def test_a_defense_with_stale_rows_says_so():
    records = rows("plain_lora", [1.0] * 3) + [r | {"stale": True} for r in rows("she", [0.1] * 3)]
    assert list(card([r | {"stale": r.get("stale", False)} for r in records])) == ["plain_lora", "she (stale rows)"]



def test_a_cost_only_run_has_no_utility_or_verdict_column():
    """Cost scenarios have no model and no attack: the columns that would only say '–' and 'no verdict' go."""
    costs = [r | {"attack": "none", "rouge1": None, "utility": None, "utility_lo": None, "utility_hi": None, "utility_n": None}
             for r in rows("plain_lora", [0]) + rows("she_lora", [0], up=2e6)]
    table = card(costs)
    assert set(table) == {"plain_lora", "she_lora"}
    assert not any(k.startswith(("utility", "verdict", "privacy")) for k in table["she_lora"])
    assert table["she_lora"]["up / down per client-round ↓"].startswith("1.9 MiB / 3.8 MiB")
