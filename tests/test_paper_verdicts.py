"""The paper's DAGER table: levels for FlexLoRA, paired contrasts for the rest, verdicts only in the
paper's regime, Holm over the table."""

import pandas as pd

from benchmark.contract.attack import Control
from benchmark.reporting.calibration import FAIL, PASS, Calibration, ControlResult
from benchmark.reporting.paper_verdicts import MARGIN, paper_verdict_table

CONTROL = Control(scenario="paper", overrides={}, metric="rouge1", floor=0.5, why="test")


def rows(defense_name, label, params, rouges, batch, *, seeds=6, round_=2, observation="grad", mode="naive",
         scenario="regime"):
    return [{"scenario": scenario, "defense": label, "defense_name": defense_name, "defense_params": params,
             "attack": "dager", "attack_mode": mode, "seed": i % seeds, "status": "ok", "rouge1": r,
             "metric_directions": {"rouge1": True}, "probe_batch_size": batch, "probe_batch": i // seeds,
             "probe_rank": 64, "tiers": "low:r4:b0.01/high:r64:b0.01", "probe_round": round_,
             "observation": observation, "threat_init": "client"} for i, r in enumerate(rouges)]


def table(data, cal=None):
    out = paper_verdict_table(pd.DataFrame(data), calibration=cal)
    return {(r["scenario"], r["method"], r["batch"]): r for r in out.to_dict("records")}


def test_levels_for_flexlora_and_paired_contrasts_for_the_defenses():
    plain = [0.95 + 0.01 * (i % 3) for i in range(36)]
    data = (rows("plain_lora", "plain_lora", {}, plain, 4)
            + rows("she_lora", "she_lora_0.125", {"budget_scale": 0.125}, [0.01 * (i % 4) for i in range(36)], 4)
            + rows("plain_lora", "plain_lora", {}, [0.15, 0.25] * 18, 8))
    got = table(data)
    assert got[("regime", "FlexLoRA", 4)]["verdict"] == "reproduced"  # 0.96 against the paper's 0.9518
    assert got[("regime", "FlexLoRA", 8)]["verdict"] == "refuted"  # 0.20 against 0.6114, well beyond the margin
    she = got[("regime", "SHE-LoRA", 4)]
    assert she["paper Δ vs FlexLoRA %"] == "-94.5" and she["ours Δ vs plain LoRA % [95% CI]"].startswith("-94.5")
    assert she["verdict"] == "reproduced"  # the contrast, not the level, is compared
    assert "seeds=6" in she["ours Δ vs plain LoRA % [95% CI]"]


def test_a_defense_equal_to_plain_lora_case_by_case_does_not_reproduce_a_large_contrast():
    """The reviewer's example: SHE-LoRA's level 2.1 reads close to the paper's 0.0 at batch 16, but it equals
    plain LoRA case by case, while the paper claims a 10-point drop."""
    plain = [0.0, 0.05, 0.01] * 12
    data = rows("plain_lora", "plain_lora", {}, plain, 16) + rows("she_lora", "she_lora_0.125", {"budget_scale": 0.125}, plain, 16)
    she = table(data)[("regime", "SHE-LoRA", 16)]
    assert she["ours Δ vs plain LoRA % [95% CI]"].startswith("0.0 [") and she["verdict"] != "reproduced"


def test_settings_outside_the_papers_regime_are_not_comparable_and_named():
    data = (rows("plain_lora", "plain_lora", {}, [0.9] * 12, 4, round_=1, scenario="r1")
            + rows("plain_lora", "plain_lora", {}, [0.9] * 12, 4, observation="sgd", scenario="sgd")
            + rows("plain_lora", "plain_lora", {}, [0.9] * 12, 4)
            + rows("dp", "dp", {"clip": 1.0, "sigma": 0.01}, [0.0] * 12, 4))
    got = table(data)
    assert got[("r1", "FlexLoRA", 4)]["verdict"] == "not comparable (round 1: B = 0, no dL/dA signal)"
    assert got[("sgd", "FlexLoRA", 4)]["verdict"].startswith("not comparable (observes an sgd step")
    assert got[("regime", "FlexLoRA-DP", 4)]["verdict"].startswith("not comparable (DP setting")


def test_an_uncalibrated_mode_gets_no_verdict():
    cal = Calibration((ControlResult("dager", "naive", CONTROL, FAIL), ControlResult("dager", "adaptive", CONTROL, PASS)))
    got = table(rows("plain_lora", "plain_lora", {}, [0.95] * 12, 4), cal)
    assert got[("regime", "FlexLoRA", 4)]["verdict"] == "uncalibrated"


def test_adaptive_rows_are_reported_but_not_judged_nor_counted_in_holm():
    """The paper ran naive DAGER: an adaptive row keeps its numbers, gets *not comparable*, and does not
    join the Holm family (eleven unclear adaptive figures leave a lone naive refutation standing)."""
    weak = [0.7, 0.85, 0.8, 0.75, 0.78, 0.82]
    data = rows("plain_lora", "plain_lora", {}, weak, 4)
    for k in range(11):
        data += rows("plain_lora", "plain_lora", {}, [0.1, 0.9] * 3, 8, scenario=f"s{k}", mode="adaptive")
    out = paper_verdict_table(pd.DataFrame(data))
    naive = out[(out["mode"] == "naive")]
    adaptive = out[(out["mode"] == "adaptive")]
    assert list(naive["verdict"]) == ["refuted"]
    assert len(adaptive) == 11 and all(v.startswith("not comparable (adaptive attack") for v in adaptive["verdict"])
    assert all(c.startswith("50.0 [") for c in adaptive["ours R-1 % [95% CI]"])


def test_holm_over_the_table_can_withhold_a_lone_refutation():
    """A refutation at p = 0.015 stands alone, and falls once eleven unclear figures share the family."""
    weak = [0.7, 0.85, 0.8, 0.75, 0.78, 0.82]  # 6 cases over 6 seeds, ~0.78 against the paper's 0.9518
    crowd = rows("plain_lora", "plain_lora", {}, weak, 4)
    for k in range(11):
        crowd += rows("plain_lora", "plain_lora", {}, [0.1, 0.9] * 3, 8, scenario=f"s{k}")
    assert MARGIN == 0.10
    assert table(rows("plain_lora", "plain_lora", {}, weak, 4))[("regime", "FlexLoRA", 4)]["verdict"] == "refuted"
    assert table(crowd)[("regime", "FlexLoRA", 4)]["verdict"] == "inconclusive"


def test_a_method_run_at_several_settings_gets_a_row_per_setting():
    """DP at two noise levels in one cell (the attack-strength DP frontier): each is paired with plain LoRA
    on its own, named by its label, instead of both being pooled into one ambiguous pairing."""
    dp = rows("dp", "dp_sigma1e-4", {"sigma": 1e-4}, [0.9] * 12, 4) + rows("dp", "dp_sigma1", {"sigma": 1.0}, [0.0] * 12, 4)
    data = rows("plain_lora", "plain_lora", {}, [0.9] * 12, 4) + dp
    got = table(data)
    low, high = got[("regime", "FlexLoRA-DP (dp_sigma1e-4)", 4)], got[("regime", "FlexLoRA-DP (dp_sigma1)", 4)]
    assert low["ours Δ vs plain LoRA % [95% CI]"].startswith("0.0") and high["ours Δ vs plain LoRA % [95% CI]"].startswith("-90.0")
    assert ("regime", "FlexLoRA", 4) in got
