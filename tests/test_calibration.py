"""Positive controls: the calibration suite runs exactly the controls the attacks declare, each attack
reaches its floor on its control scaled to the tiny scenario, and a report opens with the calibration
table and gives no verdict on a number from an attack whose control did not pass."""

import dataclasses
import json
import math

import pytest
import torch

from benchmark.config import ComponentSpec, ScenarioSpec, SuiteConfig
from benchmark.contract import CONTROL_DEFENSE, CONTROL_TEST_SCENARIO, control_label
from benchmark.contract.plugins import ATTACKS
from benchmark.reporting.calibration import (
    FAIL,
    NOT_RUN,
    PASS,
    STALE,
    UNCALIBRATED,
    newest_committed,
)
from benchmark.reporting.report import write_report
from benchmark.running import Overrides, execute, plan, resolve_suite
from benchmark.running.catalog import CALIBRATION_SUITE, calibration_drift, control_entry

NAMES = ATTACKS.names()
CONTROLS = {name: ATTACKS.get(name).control for name in NAMES}


# ---- the suite ---------------------------------------------------------------------------------


def test_the_calibration_suite_runs_every_declared_control():
    """The TOML is the declarations written out: an attack added or a control changed without the suite
    fails here, with the entry to write."""
    assert calibration_drift(resolve_suite(CALIBRATION_SUITE), CONTROLS) == []


def test_a_drifted_suite_is_told_what_to_write():
    suite = resolve_suite(CALIBRATION_SUITE)
    name = NAMES[0]
    moved = {**CONTROLS, name: dataclasses.replace(CONTROLS[name], overrides={"rounds": 7})}
    drift = calibration_drift(suite, moved)
    assert len(drift) == 1 and drift[0].startswith(f"scenario {control_label(name)} must read ")
    assert "rounds = 7" in drift[0]
    fewer = dataclasses.replace(suite, scenarios=suite.scenarios[1:],
                                defenses=(ComponentSpec("she_lora", "she_lora"),))
    drift = calibration_drift(fewer, CONTROLS)
    assert any("defenses must be ['plain_lora']" in d for d in drift)
    assert any(d.startswith(f"scenario {suite.scenarios[0].label} must read {{ name = ") for d in drift)


def test_the_calibration_suite_plans_each_attack_in_its_control_alone():
    """What `shebench run --suite calibration --dry-run` lists: every attack, both modes, only in its own
    control scenario and only against plain LoRA."""
    suite = resolve_suite(CALIBRATION_SUITE)
    groups = plan(suite, Overrides({}, {}, {}))
    seen = {}
    for group in groups:
        assert group.defense.name == CONTROL_DEFENSE
        for cell in group.cells:
            assert group.scenario.name == control_label(cell.attack.name)
            seen.setdefault(cell.attack.name, set()).add(cell.mode)
    assert seen == {name: {"naive", "adaptive"} for name in NAMES}
    assert {g.scenario.name for g in groups} == {control_label(n) for n in NAMES}


# ---- each control at test scale ----------------------------------------------------------------


def run_control(name, tmp_path, scenario=CONTROL_TEST_SCENARIO, overrides=None):
    """``name``'s control through the harness (plan, simulate, attack, score) on ``scenario``; its rows."""
    control = CONTROLS[name]
    spec = ScenarioSpec(scenario, control_label(name), control.tiny if overrides is None else overrides)
    suite = SuiteConfig(name="control_test", scenarios=(spec,), defenses=(ComponentSpec(CONTROL_DEFENSE, CONTROL_DEFENSE),),
                        attacks=(ComponentSpec(name, name, dict(control.params)),), attack_modes=("naive",), seeds=(0,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return execute(plan(suite, Overrides({}, {}, {})), tmp_path / "run", "cpu", quiet=True)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", NAMES)
def test_each_attack_reaches_its_floor_on_its_control_at_test_scale(name, tmp_path):
    """The control's tiny version (tiny random Llama, MiniLM tokenizer, through the whole harness): every
    case scores, and the mean of the control metric reaches the test-scale floor. A broken attack, or one
    whose preconditions stop holding in the harness, fails here before any reference run."""
    control = CONTROLS[name]
    rows = run_control(name, tmp_path)
    assert rows and all(r["status"] == "ok" for r in rows), [(r["status"], r["error"], r["attack_note"]) for r in rows]
    values = [r[control.metric] for r in rows]
    assert all(v is not None and math.isfinite(v) for v in values)
    mean = sum(values) / len(values)
    assert mean >= control.tiny_floor, f"{name}: {control.metric} {values} (mean {mean:.3f}) < {control.tiny_floor}"
    if name == "mia":  # classification candidates reach the attack with their labels, scored by them
        assert {r["mia_reads"] for r in rows} == {"label"}


# ---- the report --------------------------------------------------------------------------------

DIRS = {"rouge1": True, "token_recall": True}


def _row(run, scenario, defense, attack, mode, i=0, **values):
    base = {"run_id": run, "cell_id": f"{run}-{scenario}-{defense}-{attack}-{mode}-{i}", "scenario": scenario,
            "defense": defense, "defense_name": defense.split("_0")[0], "defense_stack": defense.split("_0")[0],
            "attack": attack, "attack_mode": mode, "seed": 0, "status": "ok", "utility": 0.7, "probe_batch": i,
            "probe_batch_size": 4, "probe_rank": 256, "probe_round": 1, "observation": "grad", "threat_init": "server",
            "tiers": "low:r4:b0.2/high:r256:b0.2", "defense_params": {}, "metric_directions": DIRS}
    if attack == "mia":
        base.update(metric_directions={"mia_auc": True}, probe_batch=None, n_members=40, n_nonmembers=40)
    return {**base, **values}


def _write_run(path, rows, scenarios, attacks, suite="custom"):
    path.mkdir(parents=True)
    (path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = {"run_id": path.name, "argv": ["shebench", "run"], "written_at": "2026-01-01T00:00:00",
                "suite": {"name": suite, "scenarios": scenarios, "attacks": attacks}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def _control_spec(name):
    c = CONTROLS[name]
    return {"ref": c.scenario, "label": control_label(name), "overrides": c.overrides, "attacks": [name]}


def _controls(run, dager=1.0, mia=0.9, dager_status="ok"):
    rows = [_row(run, control_label("dager"), "plain_lora", "dager", m, i, rouge1=dager, status=dager_status)
            for m in ("naive", "adaptive") for i in range(3)]
    rows += [_row(run, control_label("mia"), "plain_lora", "mia", m, mia_auc=mia, mia_auc_lo=mia - 0.1,
                  mia_auc_hi=min(1.0, mia + 0.1)) for m in ("naive", "adaptive")]
    return rows


def _defense_rows(run):
    rows = [_row(run, "r1", "she_lora_0.125", "dager", m, i, rouge1=0.0, defense_params={"budget_scale": 0.00625})
            for m in ("naive", "adaptive") for i in range(3)]
    rows += [_row(run, "r1", "she_lora_0.125", "leak_label", "naive", i, token_recall=0.5, rouge1=0.4) for i in range(3)]
    rows += [_row(run, "mia", "she_lora_0.125", "mia", "naive", mia_auc=0.5, mia_auc_lo=0.45, mia_auc_hi=0.55)]
    return rows


def _sections(text):
    return [line for line in text.splitlines() if line.startswith("## ")]


def _table_cells(text, first):
    """The first markdown table in ``text``: header -> cell of the row whose first cell is ``first``."""
    lines = [line for line in text.split("\n\n")[1].splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == first:
            return dict(zip(header, cells))
    raise AssertionError(f"no row {first!r} in {lines}")


def _calibration_rows(text):
    """attack/mode -> the calibration table's cells."""
    lines = text.split("## Calibration")[1].split("\n\n")[1].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        out[(cells["attack"], cells["mode"])] = cells
    return out


def test_a_report_opens_with_the_scorecard_and_calibration_table_and_withholds_verdicts(tmp_path):
    """DAGER's control passed; MIA's missed its floor; token_leak (run under the label leak_label) has no
    control row. The table says so, and only DAGER's numbers keep their verdicts."""
    run = "synthetic"
    rows = _controls(run, dager=1.0, mia=0.6) + _defense_rows(run)
    scenarios = [_control_spec("dager"), _control_spec("mia"), {"ref": "paper", "label": "r1", "overrides": {}},
                 {"ref": "mia", "label": "mia", "overrides": {}}]
    attacks = [{"name": "dager", "label": "dager"}, {"name": "mia", "label": "mia"},
               {"name": "token_leak", "label": "leak_label"}]
    path = _write_run(tmp_path / run, rows, scenarios, attacks)
    report = write_report([path], tmp_path / "out", calibration_runs=[]).read_text()
    assert _sections(report)[0].startswith("## Scorecard") and _sections(report)[1].startswith("## Calibration")
    table = _calibration_rows(report)
    assert table[("dager", "naive")]["result"] == PASS and table[("dager", "adaptive")]["result"] == PASS
    assert table[("dager", "naive")]["measured [95% CI]"].startswith("1.000 [1.000, 1.000] (n=3)")
    assert table[("dager", "naive")]["floor"] == f"{CONTROLS['dager'].floor:g}"
    assert table[("dager", "naive")]["control"].startswith(CONTROLS["dager"].scenario + ": ")
    assert table[("mia", "naive")]["result"] == FAIL
    assert table[("mia", "naive")]["measured [95% CI]"].startswith("0.600 [0.500, 0.700] (n=80)")
    assert table[("token_leak", "naive")]["result"] == NOT_RUN
    # verdicts: DAGER's paper figure keeps one, MIA's signal and token_leak's numbers are uncalibrated
    paper = report.split("## DAGER against the SHE-LoRA paper")[1].split("\n## ")[0]
    assert "SHE-LoRA" in paper and "| uncalibrated |" not in paper and "| not comparable (round 1: B = 0" in paper
    mia = report.split("## Membership inference")[1].split("\n## ")[0]
    she = [line for line in mia.splitlines() if "she_lora_0.125" in line]
    assert she and all(UNCALIBRATED in line and "detected" not in line for line in she)
    matrix = _table_cells(report.split("## Privacy matrix")[1], "r1 / she_lora_0.125")
    assert matrix["dager/naive (rouge1 ↓)"] == matrix["dager/adaptive (rouge1 ↓)"] == "0.000 ± 0.000"
    assert matrix["leak_label/naive (rouge1 ↓)"] == "0.400 ± 0.000 (uncalibrated)"
    batches = report.split("## Reconstruction by batch size")[1].split("\n## ")[0]
    assert any("leak_label" in line and UNCALIBRATED in line for line in batches.splitlines())
    assert not any("| dager |" in line and UNCALIBRATED in line for line in batches.splitlines())


def test_an_abstaining_or_other_settings_control_does_not_calibrate(tmp_path):
    """A control case that abstained is a failed control; rows labelled as a control but run with other
    settings are not the control at all."""
    rows = _controls("a", dager_status="abstained") + _defense_rows("a")
    scenarios = [_control_spec("dager"), {**_control_spec("mia"), "overrides": {"train": {"local_steps": 1}}},
                 {"ref": "paper", "label": "r1", "overrides": {}}, {"ref": "mia", "label": "mia", "overrides": {}}]
    path = _write_run(tmp_path / "a", rows, scenarios, [{"name": "dager", "label": "dager"}, {"name": "mia", "label": "mia"}])
    report = write_report([path], tmp_path / "out", calibration_runs=[]).read_text()
    table = _calibration_rows(report)
    assert table[("dager", "naive")]["result"] == FAIL and "3 of 3 cases unscored" in table[("dager", "naive")]["measured [95% CI]"]
    assert table[("mia", "naive")]["result"] == NOT_RUN
    assert "| uncalibrated |" in report.split("## DAGER against the SHE-LoRA paper")[1]


def test_controls_come_from_a_calibration_run_and_stale_ones_do_not_count(tmp_path):
    """A report of defense rows alone reads its controls from the calibration run it is given; a control
    computed with code that has changed since (its cell fingerprint moved) is shown stale, uncalibrated."""
    defense = _write_run(tmp_path / "d", _defense_rows("d"), [{"ref": "paper", "label": "r1", "overrides": {}},
                                                                {"ref": "mia", "label": "mia", "overrides": {}}],
                         [{"name": "dager", "label": "dager"}, {"name": "mia", "label": "mia"}])
    controls = _controls("c", mia=0.9)
    for row in controls:
        if row["attack"] == "mia":
            row["code_fp"] = "0123456789ab"  # not what this checkout computes for the cell: stale
    cal = _write_run(tmp_path / "c", controls, [_control_spec("dager"), _control_spec("mia")],
                     [{"name": "dager", "label": "dager"}, {"name": "mia", "label": "mia", "params": {"batch_size": 8}}],
                     suite=CALIBRATION_SUITE)
    report = write_report([defense], tmp_path / "out", calibration_runs=[cal]).read_text()
    table = _calibration_rows(report)
    assert table[("dager", "naive")]["result"] == PASS and table[("mia", "naive")]["result"] == STALE
    assert f"Control rows from: `{cal}`" in report
    mia = report.split("## Membership inference")[1].split("\n## ")[0]
    assert all(UNCALIBRATED in line for line in mia.splitlines() if "she_lora_0.125" in line)


def test_the_newest_committed_calibration_run_is_the_fallback(tmp_path):
    for name, stamp, suite in (("old", "2026-01-01", CALIBRATION_SUITE), ("new", "2026-03-01", CALIBRATION_SUITE),
                               ("newest_other", "2026-05-01", "paper")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"written_at": stamp, "suite": {"name": suite}}))
    assert newest_committed(tmp_path) == tmp_path / "new"
    assert newest_committed(tmp_path / "nowhere") is None


def test_control_entry_is_the_suite_entry_shape():
    entry = control_entry("dager", CONTROLS["dager"])
    assert entry["name"] == CONTROLS["dager"].scenario and entry["label"] == "control_dager" and entry["attacks"] == ["dager"]


def test_report_command_takes_the_calibration_run(tmp_path, capsys):
    from benchmark.cli import main

    defense = _write_run(tmp_path / "d", _defense_rows("d"), [{"ref": "paper", "label": "r1", "overrides": {}}],
                         [{"name": "dager", "label": "dager"}])
    cal = _write_run(tmp_path / "c", _controls("c"), [_control_spec("dager"), _control_spec("mia")],
                     [{"name": "dager", "label": "dager"}, {"name": "mia", "label": "mia"}], suite=CALIBRATION_SUITE)
    assert main(["report", str(defense), "--calibration", str(cal), "--out", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"Control rows from: `{cal}`" in report and _calibration_rows(report)[("dager", "naive")]["result"] == PASS
    assert main(["report", str(defense), "--calibration", str(tmp_path / "nowhere")]) == 2
    assert "--calibration" in capsys.readouterr().err
