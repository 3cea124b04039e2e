"""The privacy report: intervals, verdicts against the paper, and the tables/plots built from rows."""

import math

import pandas as pd
import pytest

from benchmark.reporting.privacy import (
    batch_table,
    frontier_table,
    nominal_budget,
    plot_batch,
    plot_budget,
    plot_frontier,
)

DIRS = {"rouge1": True}


def rows(defense_name, label, params, rouges, batch, tiers="low:r4:b0.01/high:r64:b0.01", status="ok", mode="naive"):
    return [{"scenario": "paper", "defense": label, "defense_name": defense_name, "defense_params": params,
             "attack": "dager", "attack_mode": mode, "seed": i % 3, "status": status, "rouge1": r if status == "ok" else None,
             "metric_directions": DIRS, "probe_batch_size": batch, "probe_batch": i // 3, "probe_rank": 64, "tiers": tiers,
             "probe_round": 1, "observation": "grad", "threat_init": "server",
             "utility": 0.7 + 0.01 * (i % 3)} for i, r in enumerate(rouges)]


def test_nominal_budget_reads_scale_and_tier():
    row = {"defense_name": "she_lora", "defense_params": {"budget_scale": 0.125}, "tiers": "low:r4:b0.05/high:r64:b0.01",
           "probe_rank": 64}
    assert nominal_budget(row) == pytest.approx(0.00125)
    assert nominal_budget({**row, "defense_name": "maskcrypt", "defense_params": {"budget": 0.2}}) == 0.2
    assert math.isnan(nominal_budget({**row, "defense_name": "plain_lora"}))


def test_batch_table_and_plots(tmp_path):
    data = []
    for b, r in ((1, 1.0), (2, 0.9), (4, 0.5)):
        data += rows("plain_lora", "plain_lora", {}, [r] * 6, b)
        for mode in ("naive", "adaptive"):
            data += rows("she_lora", "she_lora_1", {"budget_scale": 1.0}, [0.0] * 6, b, mode=mode)
            data += rows("she_lora", "she_lora_20", {"budget_scale": 0.5}, [0.1] * 6, b, mode=mode)
    df = pd.DataFrame(data)
    table = batch_table(df)
    assert {"batch 1", "batch 2", "batch 4"} <= set(table.columns)
    plain = table[table["defense"] == "plain_lora"].iloc[0]
    # six cases over three seeds, all 1.0: no variance to estimate, so the exact bound for three equal seeds
    assert plain["batch 1"].startswith(f"1.000 [{0.025 ** (1 / 3):.3f}, 1.000] (n=6, seeds=3)")
    for fn, name in ((plot_batch, "b.png"), (plot_budget, "u.png"), (plot_frontier, "f.png")):
        assert fn(df, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 1000


def test_mia_table_says_when_the_interval_includes_chance():
    from benchmark.reporting.privacy import mia_table

    base = {"scenario": "mia", "attack_mode": "naive", "seed": 0, "status": "ok", "attack_params": {"score": "loss"},
            "n_members": 200, "n_nonmembers": 200, "tpr_at_1fpr": 0.02, "tpr_at_1fpr_lo": 0.0, "tpr_at_1fpr_hi": 0.05}
    df = pd.DataFrame([{**base, "defense": "plain_lora", "mia_auc": 0.62, "mia_auc_lo": 0.57, "mia_auc_hi": 0.67},
                       {**base, "defense": "she_lora", "mia_auc": 0.51, "mia_auc_lo": 0.45, "mia_auc_hi": 0.56}])
    table = mia_table(df).set_index("defense")
    assert table.loc["plain_lora", "signal"] == "detected"
    assert table.loc["she_lora", "signal"].startswith("none detectable")
    assert table.loc["plain_lora", "members / non-members"] == "200 / 200"
    assert table.loc["plain_lora", "score"] == "loss"  # the parameter, for rows that predate mia_primary
    auto = {**base, "defense": "plain_lora", "attack_params": {"score": "auto"}, "mia_primary": "ref",
            "mia_auc": 0.62, "mia_auc_lo": 0.57, "mia_auc_hi": 0.67}
    assert mia_table(pd.DataFrame([auto])).loc[0, "score"] == "ref"  # what score=auto chose, not "auto"


def test_sections_cope_with_runs_that_have_no_batch_4(tmp_path):
    from benchmark.reporting.privacy import privacy_sections

    df = pd.DataFrame(rows("plain_lora", "plain_lora", {}, [1.0] * 3, 1))
    lines = privacy_sections(df, tmp_path, lambda t: t.to_markdown(index=False) if hasattr(t, "to_markdown") else str(t))
    assert not any("frontier" in ln for ln in lines)  # no batch-4 cases: no frontier plot, and no crash


def test_attack_time_table_counts_each_computation_once():
    from benchmark.reporting.privacy import attack_time_table

    data = rows("plain_lora", "plain_lora", {}, [1.0, 0.9, 0.8], 4) + rows("plain_lora", "plain_lora", {}, [0.2] * 3, 8)
    for i, r in enumerate(data):
        r["attack_s"] = 10.0 * (i + 1)
    reused = [{**r, "attack_mode": "adaptive", "attack_s": 999.0, "attack_reused": True, "attack_note": "dager variant"}
              for r in data[:3]]
    reused += [{**r, "attack_mode": "adaptive", "attack_s": 999.0,  # a run from before the attack_reused column
                "attack_note": "dager variant; same as the other mode: the view hides nothing"} for r in data[3:]]
    table = attack_time_table(pd.DataFrame(data + reused)).set_index("attack")
    assert table.loc["dager", "batch 4"] == "20 [10, 30] (n=3)"  # the reused copies (999 s) are not counted
    assert table.loc["dager", "batch 8"] == "50 [40, 60] (n=3)"


def test_attacks_plot_needs_two_attacks_measured_at_two_sizes(tmp_path):
    from benchmark.reporting.privacy import plot_attacks

    one = rows("plain_lora", "plain_lora", {}, [1.0] * 3, 4) + rows("plain_lora", "plain_lora", {}, [0.5] * 3, 8)
    assert not plot_attacks(pd.DataFrame(one), tmp_path / "a.png")  # DAGER alone: nothing to set side by side
    other = [{**r, "attack": "utr", "rouge1": 0.7} for r in one]
    assert plot_attacks(pd.DataFrame(one + other), tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_frontier_joins_noise_levels_and_takes_the_strongest_mode(tmp_path):
    data = rows("plain_lora", "plain_lora", {}, [1.0] * 3, 4)
    for sigma, rouge in ((1e-3, 0.9), (0.1, 0.0)):
        for mode, r in (("naive", rouge), ("adaptive", rouge / 2)):
            data += [{**r_, "dp_sigma": sigma, "defense_stack": "dp+plain_lora", "utility": 0.7 - sigma, "epsilon": 1 / sigma,
                      "utility_lo": 0.6 - sigma, "utility_hi": 0.8 - sigma, "utility_n": 512}
                     for r_ in rows("dp", f"dp_sigma{sigma:g}", {}, [r] * 3, 4, mode=mode)]
    data += [{**r_, "dp_sigma": 1.0, "defense_stack": "dp+plain_lora", "utility": 0.5}
             for r_ in rows("dp", "dp_sigma1", {}, [0.0] * 3, 4, status="abstained")]
    df = pd.DataFrame([{**r, "seed": 0} for r in data])
    table = frontier_table(df, attacks=("dager",))
    got = {r["defense"]: r for _, r in table.iterrows()}
    assert list(table["defense"]) == ["dp_sigma0.001", "dp_sigma0.1", "dp_sigma1", "plain_lora"]  # curve ordered by noise
    assert got["dp_sigma1"]["dager b4 ↓ (mode)"] == "abstained (3 of 3 cases)"  # never a silent gap
    assert got["dp_sigma0.001"]["dager b4 ↓ (mode)"].startswith("0.900") and "(naive)" in got["dp_sigma0.001"]["dager b4 ↓ (mode)"]
    # one seed: the Wilson interval over the 512 test examples, not a bootstrap over one value
    assert got["dp_sigma0.1"]["utility ↑ [95% CI] (n)"] == "0.600 [0.500, 0.700] (n=512)"
    assert got["plain_lora"]["utility ↑ [95% CI] (n)"] == "0.700 (no interval recorded)"  # an older row: says so
    assert plot_frontier(df, tmp_path / "f.png") and (tmp_path / "f.png").stat().st_size > 1000
