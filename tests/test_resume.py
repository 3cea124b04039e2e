"""Resume only what is still valid: cell identity covers code and data, stale cells are recomputed and
the run says why, provenance is appended, a finished run says so, concurrent runs are refused."""

from __future__ import annotations

import json
import math
import sys

import pytest

from benchmark.cli import main
from benchmark.config import ConfigError, suite_from_dict
from benchmark.running import Overrides, execute, plan, resume_state, run_lock, write_manifest
from benchmark.running.results import dumps, read_rows
from defenses import DEFENSES


def csv_text(extra: str = "") -> str:
    return "text,label\n" + "".join(f"sentence number {i}{extra},{'pos' if i % 2 else 'neg'}\n" for i in range(60))


def test_first_run_computes_rerun_is_finished_and_a_data_change_recomputes(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text(csv_text())
    argv = ["run", "--suite", "smoke", "--set", "rounds=1", "--set", f'data.path="{data}"', "--out", str(tmp_path / "runs"),
            "--run-id", "r", "-q"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["defense", "utility"] and lines[2].startswith("plain_lora")  # the summary table
    run = tmp_path / "runs" / "r"
    assert lines[-1] == f"shebench: report at {run / 'report.md'}" and (run / "report.md").exists()

    assert main(argv) == 0  # nothing left to do
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == f"shebench: all 1 cells already finished, report at {run / 'report.md'}"

    with open(run / "rows.jsonl", "ab") as fh:  # junk lines are skipped with file and line, not fatal
        fh.write(b"42\n\xff\xfe\n")
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert f"{run / 'rows.jsonl'}:2: a JSON int" in err and f"{run / 'rows.jsonl'}:3: not UTF-8" in err
    assert "already finished" in out

    data.write_text(csv_text(" changed"))  # same config, new data: the cell is stale
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "1 finished cells are stale and will be recomputed: data or model changed (data:" in err
    assert str(data.resolve()) in err
    rows = read_rows(run / "rows.jsonl")
    assert len(rows) == 2 and rows[0]["cell_key"] == rows[1]["cell_key"] and rows[0]["cell_id"] != rows[1]["cell_id"]
    assert rows[0]["data_fp"] != rows[1]["data_fp"] and rows[0]["code_fp"] == rows[1]["code_fp"]

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["argv"][:3] == ["shebench", "run", "--suite"]  # the first invocation stays
    assert len(manifest["resumed"]) == 1  # the finished re-runs wrote nothing; the recompute is appended
    resumed = manifest["resumed"][0]
    assert {"argv", "git", "packages", "machine", "at", "stale_cells"} <= set(resumed) and resumed["stale_cells"] == 1
    assert [c["cell_id"] for c in manifest["cells"]] == [rows[1]["cell_id"]]

    report = (run / "report.md").read_text()
    assert "Rows: 1 (1 ok" in report  # the stale row is left out of the report


@pytest.fixture
def temp_defense(tmp_path, monkeypatch):
    """A defense whose source file the test can edit, registered under a lazy target."""
    module = tmp_path / "shebench_temp_defense.py"
    module.write_text("from defenses.plain_lora import PlainLoRA\n\n\nclass Temp(PlainLoRA):\n    name = 'temp_def'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    DEFENSES.register("temp_def", "shebench_temp_defense:Temp", force=True)
    yield module
    DEFENSES.unregister("temp_def")
    sys.modules.pop("shebench_temp_defense", None)


def test_a_code_change_makes_cells_stale_and_names_the_file(tmp_path, temp_defense):
    suite = suite_from_dict({"scenarios": ["tiny"], "defenses": ["temp_def", "plain_lora"]})
    before = plan(suite, Overrides({}, {}, {}))
    run = tmp_path / "run"
    write_manifest(run, suite, before, ["shebench", "run"], "cpu")
    for g in before:  # pretend both cells finished
        c = g.cells[0]
        (run / "rows.jsonl").open("a").write(json.dumps({"cell_id": c.cell_id, "cell_key": c.key, "code_fp": c.code_fp,
                                                         "data_fp": c.data_fp, "status": "ok"}) + "\n")
    assert resume_state(before, run).todo == 0

    temp_defense.write_text(temp_defense.read_text() + "\n# a behavioural change\nVERSION = 2\n")
    after = plan(suite, Overrides({}, {}, {}))
    changed, same = after[0].cells[0], after[1].cells[0]
    assert changed.key == before[0].cells[0].key and changed.cell_id != before[0].cells[0].cell_id
    assert same.cell_id == before[1].cells[0].cell_id  # plain_lora does not import the edited module
    state = resume_state(after, run)
    assert state.todo == 1 and state.stale == 1
    assert state.reasons == [f"code changed since they ran ({temp_defense.resolve().as_posix()})"]


def test_component_fingerprint_follows_imports():
    from benchmark.running.fingerprint import component_files

    names = {p.name for p in component_files("defenses.maskcrypt")}
    assert {"maskcrypt.py", "dp.py", "common.py", "__init__.py", "ckks.py"} <= names
    assert "she_lora.py" not in names and "plain_lora.py" not in names


def test_a_stack_cell_counts_every_layer_code():
    """``dp`` imports no other defense, yet its cells run over plain_lora: the fingerprint follows the stack."""
    from benchmark.config import ComponentSpec
    from benchmark.running import cell_files, defense_stack

    names = {p.name for p in cell_files(defense_stack(ComponentSpec("dp", "dp")), None, "inproc")}
    assert {"dp.py", "plain_lora.py"} <= names and "she_lora.py" not in names
    names = {p.name for p in cell_files(defense_stack(ComponentSpec("dp+she_lora", "x")), None, "inproc")}
    assert {"dp.py", "she_lora.py"} <= names and "plain_lora.py" not in names


def test_library_modules_count_only_for_the_defenses_that_import_them():
    """Editing she_lora/lift.py must stale she_lora's cells and leave plain_lora's valid. The harness
    imports no she_lora module (its aggregation reference is its own), so lowrank counts only for
    the defenses that import it."""
    from benchmark.running.fingerprint import code_files, harness_files

    assert not [p for p in harness_files() if p.parent.name == "she_lora"]
    assert {"driver.py", "node.py"} <= {p.name for p in harness_files() if p.parent.name == "federation"}

    def library(target):
        return {p.name for p in code_files(target, None) if p.parent.name == "she_lora"}

    plain, she = library("defenses.plain_lora:PlainLoRA"), library("defenses.she_lora:SHELoRADefense")
    assert "lowrank.py" in plain and "lift.py" not in plain and "client.py" not in plain
    assert {"lift.py", "client.py", "server.py", "plan.py", "lowrank.py", "ckks.py"} <= she


def test_planning_parses_each_source_file_once():
    """code_files runs for every planned cell: the import graph is read once per file version."""
    from benchmark.running import fingerprint

    fingerprint.code_files("defenses.she_lora:SHELoRADefense", "attacks.dager:DAGER")
    before = fingerprint._parsed_imports.cache_info().misses
    for target in ("defenses.she_lora:SHELoRADefense", "defenses.plain_lora:PlainLoRA"):
        fingerprint.code_files(target, "attacks.dager:DAGER")
    assert fingerprint._parsed_imports.cache_info().misses - before <= len(fingerprint.component_files("defenses.plain_lora"))


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "runs" / "busy"
    run.mkdir(parents=True)
    argv = ["run", "--suite", "smoke", "--out", str(tmp_path / "runs"), "--run-id", "busy", "-q"]
    with run_lock(run):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("shebench: error: another shebench run (pid ") and str(run) in err
        assert not (run / "rows.jsonl").exists() and not (run / "manifest.json").exists()
    with run_lock(run):  # released: the next holder gets it
        pass


def test_lock_is_exclusive_between_holders(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(ConfigError, match="another shebench run"):
            with run_lock(tmp_path):
                pass


def test_infinite_values_are_written_as_null_with_a_reason():
    row = json.loads(dumps({"epsilon": math.inf, "privacy": {"epsilon": math.inf, "sigma": 0.0}, "x": math.nan}))
    assert row["epsilon"] is None and row["privacy"] == {"epsilon": None, "sigma": 0.0} and row["x"] is None
    assert row["null_reasons"] == {"epsilon": "inf", "privacy.epsilon": "inf", "x": "nan"}


def test_report_marks_abstentions_and_uses_declared_directions(tmp_path):
    from benchmark.reporting.report import write_report

    base = {"run_id": "r", "scenario": "tiny", "defense": "she_lora", "defense_name": "she_lora", "seed": 0,
            "utility": 0.5, "threat_init": "client", "observation": "upload", "probe_round": 1, "probe_batch_size": 1,
            "start_known": "estimate", "server_saw": "plaintext A (80% of columns), B; 1.2 MB ciphertext"}
    rows = [
        {**base, "cell_id": "a", "attack": "dager", "attack_mode": "naive", "status": "abstained",
         "attack_note": "the span check found no token in the observed subspace"},
        {**base, "cell_id": "b", "attack": "leak", "attack_mode": "naive", "status": "ok", "rouge1": 0.25,
         "score_x": 0.7, "metric_directions": {"score_x": False, "rouge1": True}},
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report([run], run).read_text()
    assert "| she_lora | abstained [1] | 0.700 (uncalibrated) |" in text  # never a 0 for an abstention; no control: no verdict
    assert "leak/naive (score_x ↑)" in text  # direction from the row: higher score_x means a weaker attack
    assert "1. the span check found no token in the observed subspace" in text
    assert "| tiny | she_lora | client | upload | 1 | 1 | plaintext A (80% of columns), B; 1.2 MB ciphertext | estimate |" in text


def test_a_report_marks_rows_whose_code_changed_and_names_the_files(tmp_path, temp_defense):
    """Committed runs are not recomputed after every change: their reports must say which rows are stale."""
    from benchmark.reporting.report import load_runs

    suite = suite_from_dict({"scenarios": ["tiny"], "defenses": ["temp_def", "plain_lora"]})
    groups = plan(suite, Overrides({}, {}, {}))
    run = tmp_path / "run"
    execute(groups, run, "cpu", quiet=True)
    write_manifest(run, suite, groups, ["shebench", "run"], "cpu")
    problems: list[str] = []
    assert not load_runs([run], problems)["stale"].any() and not problems

    temp_defense.write_text(temp_defense.read_text() + "\n# a behavioural change\nVERSION = 2\n")
    problems = []
    df = load_runs([run], problems)
    assert df.set_index("defense")["stale"].to_dict() == {"temp_def": True, "plain_lora": False}
    assert len(problems) == 1 and "1 of 2 rows are stale" in problems[0]
    assert temp_defense.resolve().as_posix() in problems[0]


def test_a_report_says_when_installed_packages_differ_from_the_run():
    from benchmark.reporting.staleness import package_drift
    from benchmark.running.provenance import package_versions

    now = package_versions()
    assert package_drift({"packages": now}) == []
    name = next(iter(sorted(now)))
    assert package_drift({"packages": {**now, name: "0.0.0-old"}}) == [f"{name} 0.0.0-old -> {now[name]}"]
