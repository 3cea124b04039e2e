"""The paper comparison section: roles from defense name and parameters, reductions, table and plot."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from benchmark.reporting.paper import PLOT_NAME, paper_comparison, per_defense, reduction, reductions, role

# (label, defense_name, defense_params, upload bytes, encryption seconds)
COST = [
    ("plain_lora", "plain_lora", {}, 1000.0, 0.0),
    ("she_lora_server_lift", "she_lora", {"lift": "server_lift"}, 200.0, 0.5),
    ("she_lora_client_lift", "she_lora", {"lift": "client_lift"}, 400.0, 1.0),
    ("full_he_dense", "full_he", {"packing": "dense"}, 20_000.0, 10.0),
    ("full_he_per_column", "full_he", {"packing": "per_column"}, 100_000.0, 500.0),
    ("maskcrypt", "maskcrypt", {}, 40_000.0, 50.0),
]


def _rows(scenario: str = "cost_openllama3b", labels: dict[str, str] | None = None, seeds=(0,)) -> list[dict]:
    labels = labels or {}
    return [
        {"scenario": scenario, "defense": labels.get(label, label), "defense_name": name, "defense_params": params,
         "seed": seed, "status": "ok", "attack": "none", "bytes_up_per_client_round": up * (1 + seed),
         "enc_s": enc * (1 + seed)}
        for seed in seeds for label, name, params, up, enc in COST
    ]


def test_role_reads_name_and_params() -> None:
    def row(name, params):
        return {"defense_name": name, "defense_params": params}

    assert role(row("she_lora", {"lift": "server_lift"})) == "she_lora_server_lift"
    assert role(row("she_lora", {})) == "she_lora_client_lift"  # the defense's default lift
    assert role(row("full_he", {})) == "full_he_dense"
    assert role(row("full_he", {"packing": "per_column"})) == "full_he_per_column"
    assert role(row("full_he", {"packing": "dense", "aggregation": "lift"})) is None
    assert role(row("maskcrypt", None)) == "maskcrypt"
    assert role(row("dp", {})) is None
    assert role({"cost_role": "declared", "encrypts": "none"}) == "declared"  # a row's own declaration wins


def test_reduction_edge_cases() -> None:
    assert reduction(1.0, 4.0) == pytest.approx(75.0)
    assert math.isnan(reduction(1.0, 0.0))
    assert math.isnan(reduction(math.nan, 4.0))


def test_section_has_tables_paper_figures_and_plot(tmp_path: Path) -> None:
    df = pd.DataFrame(_rows() + _rows("tiny"))
    lines = paper_comparison(df, tmp_path)
    text = "\n".join(lines)
    assert "## Paper comparison" in text
    assert "99.71%" in text and "99.87%" in text
    # server lift vs full_he per_column: 1 - 200/100000 and 1 - 0.5/500
    assert "99.80%" in text and "99.90%" in text
    assert "| cost_openllama3b | she_lora_client_lift | maskcrypt | 99.00% | – | 98.00% | 98.80% |" in text
    assert "tiny" not in text  # only cost scenarios are compared
    assert (tmp_path / PLOT_NAME).stat().st_size > 0
    assert f"![{PLOT_NAME}]({PLOT_NAME})" in text


def test_labels_do_not_matter_and_seeds_are_averaged(tmp_path: Path) -> None:
    renamed = {"she_lora_server_lift": "she_srv", "full_he_per_column": "fhe_cols", "maskcrypt": "mc"}
    df = pd.DataFrame(_rows(labels=renamed, seeds=(0, 1)))
    red = reductions(per_defense(df))
    row = red[(red["she_lora"] == "she_srv") & (red["baseline"] == "fhe_cols")].iloc[0]
    # seeds scale both sides alike, so the reduction is the single-seed one
    assert row["upload_reduction"] == pytest.approx(99.8)
    assert row["paper_upload"] == 99.71
    assert len(red) == 6  # two lift modes x three baselines


def test_missing_baselines_and_failed_rows(tmp_path: Path) -> None:
    rows = [r for r in _rows() if r["defense_name"] in ("she_lora", "plain_lora")]
    rows.append({**_rows()[4], "status": "failed"})  # a failed full_he row must not count
    lines = paper_comparison(pd.DataFrame(rows), tmp_path)
    text = "\n".join(lines)
    assert "full_he_per_column" not in text
    assert "SHE-LoRA's reduction (1 - she / baseline" not in text


def test_no_cost_rows_no_section(tmp_path: Path) -> None:
    assert paper_comparison(pd.DataFrame(_rows("tiny")), tmp_path) == []
    assert paper_comparison(pd.DataFrame(), tmp_path) == []
    assert not (tmp_path / PLOT_NAME).exists()


def test_report_includes_the_section(tmp_path: Path) -> None:
    from benchmark.reporting.report import write_report
    from benchmark.running.results import append_row, empty_row

    run = tmp_path / "run"
    for i, row in enumerate(_rows()):
        append_row(run / "rows.jsonl", {**empty_row(), **row, "run_id": "r", "cell_id": str(i), "attack_mode": "",
                                        "git_commit": "abc", "utility": None})
    text = write_report([run], tmp_path / "out").read_text()
    assert "## Paper comparison (cost scenarios)" in text
    assert (tmp_path / "out" / PLOT_NAME).exists()
