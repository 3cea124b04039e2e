import json

from benchmark.cli import main
from benchmark.reporting.report import write_report


def test_help_list_show_and_errors(capsys):
    assert main(["list", "defenses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = {line.split()[0] for line in lines}
    assert {"plain_lora", "dp", "dp_sgd", "full_he", "maskcrypt", "she_lora"} <= names
    glosses = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert glosses["plain_lora"].startswith("FlexLoRA without protection")  # each name says what it is
    for what in ("attacks", "scenarios", "suites", "models"):
        assert main(["list", what]) == 0
        lines += capsys.readouterr().out.splitlines()
    assert all(len(line) <= 120 and len(line.split(None, 1)) == 2 for line in lines), [
        line for line in lines if len(line) > 120 or len(line.split(None, 1)) < 2]
    assert main(["show", "plain_lora"]) == 0
    assert "FlexLoRA" in capsys.readouterr().out
    assert main(["show", "plain-lora"]) == 2
    assert "Did you mean 'plain_lora'?" in capsys.readouterr().err
    assert main(["run", "--suite", "smoke", "--set", "roundz=2", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shebench: error: unknown key 'roundz'") and "\n" not in err
    assert main(["run", "--suite", "smoke", "--defense", "plain_lora,dp", "--dry-run"]) == 0
    assert "2 cells in 2 simulations" in capsys.readouterr().out


def test_run_then_report_writes_tables_and_plots(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["run", "--suite", "smoke", "--set", "rounds=1", "--out", str(out), "-q"]) == 0
    run_dir = next(out.iterdir())
    rows = [json.loads(x) for x in (run_dir / "rows.jsonl").read_text().splitlines()]
    assert rows[0]["status"] == "ok"
    report = write_report([run_dir], tmp_path / "rep")
    text = report.read_text()
    assert "## Utility and cost per defense" in text and "plain_lora" in text
    assert (tmp_path / "rep" / "costs.png").stat().st_size > 1000
    assert "## Per-tier cost" in text
    cover = text.split("## What these runs cover", 1)[1].split("\n## ", 1)[0]  # the run's command and its suite's scope
    assert "--suite smoke --set rounds=1" in cover and "Suite `smoke`:" in cover
    assert cover.count("> ") >= 1


def test_scenario_flag_selects_a_suite_entry_by_label_with_its_settings(capsys, tmp_path):
    assert main(["run", "--suite", "paper", "--scenario", "r1_client", "--dry-run", "--out", str(tmp_path)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " r1_client " in ln]
    assert len(lines) == 2  # its one defense x 2 modes x its one batch size and batch, seed 0 only
    assert all("seed=0" in ln and "batch=4#0" in ln for ln in lines)


def test_defense_flag_narrows_scenario_entries_that_name_defenses(capsys, tmp_path):
    assert main(["run", "--suite", "paper", "--scenario", "r1_server", "--defense", "dp", "--dry-run", "--out", str(tmp_path)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " r1_server " in ln]
    assert lines and all(" dp " in ln for ln in lines)


def test_attack_flag_narrows_scenario_entries_that_name_attacks(capsys, tmp_path):
    args = ["run", "--suite", "paper", "--scenario", "r1_new_attacks", "--dry-run", "--out", str(tmp_path)]
    assert main([*args, "--attack", "fedspy"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " r1_new_attacks " in ln]
    assert lines and all(" fedspy " in ln for ln in lines)
    assert main([*args, "--attack", "none"]) == 0  # the entry's own attacks no longer block 'none'
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " r1_new_attacks " in ln]
    assert len(lines) == 3 and all(" none " in ln for ln in lines)  # one simulation per defense, no attack


def test_a_case_planned_again_under_a_new_key_keeps_only_its_last_row():
    """An attack version bump re-plans the same case under a new cell key; the manifest keeps both keys,
    so the report must drop the older row of the case, not show both."""
    from benchmark.reporting.report import latest_per_case

    case = {"scenario": "r256", "defense": "plain_lora", "attack": "dager", "attack_mode": "naive", "seed": 0,
            "probe_batch_size": 2, "probe_batch": 1}
    old = {**case, "cell_id": "a", "finished_at": "2026-12-07T00:10:00", "rouge1": 0.55}
    new = {**case, "cell_id": "b", "finished_at": "2026-12-07T01:10:00", "rouge1": 1.0}
    other = {**case, "probe_batch": 2, "cell_id": "c", "finished_at": "2026-12-07T00:05:00", "rouge1": 0.9}
    kept, dropped = latest_per_case([new, old, other])
    assert [r["cell_id"] for r in kept] == ["b", "c"] and dropped == 1
    assert latest_per_case([{**case, "attack": "dager_strict", "cell_id": "d"}, new])[1] == 0  # another label


def test_summary_wraps_attack_columns_into_blocks_within_120_columns():
    from benchmark.reporting.report import SUMMARY_WIDTH, _column_blocks, _text_table

    header = ["scenario / defense", "utility ↑"] + [f"attack{i} rouge1 ↓ (naive/adaptive)" for i in range(6)]
    lines = [["default / she_lora_private_start", "0.656 ± 0.010"] + ["0.993 ± 0.007/abstained"] * 6]
    blocks = _column_blocks(header, lines)
    assert len(blocks) > 1 and all(b[:2] == [0, 1] for b in blocks)  # every block repeats the row labels
    assert sorted(i for b in blocks for i in b[2:]) == list(range(2, 8))  # each attack once
    for b in blocks:
        table = _text_table([header[i] for i in b], [[r[i] for i in b] for r in lines])
        assert max(len(line) for line in table.splitlines()) <= SUMMARY_WIDTH
