"""``scripts/check_fresh.py`` calls a run fresh only when re-planning its recorded commands gives exactly
its rows' cell ids: a row of another cell, or a planned cell without a row, makes it not fresh. The
first command's plan is a real dry run of the tiny scenario (nothing is trained); the resumed
command's is a stand-in, to keep the test to one dry run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("check_fresh", ROOT / "scripts" / "check_fresh.py")
check_fresh = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_fresh)

FIRST = ["shebench", "run", "--scenario", "tiny", "--defense", "plain_lora", "--attack", "dager", "--mode", "naive",
         "--out", "runs", "--run-id", "t", "-q"]
RESUMED = [*FIRST[:5], "she_lora", *FIRST[6:]]


@pytest.fixture(scope="module")
def first_plan():
    first = check_fresh.planned_cells(FIRST)
    assert first and all(len(c) == 12 for c in first)
    return first


@pytest.fixture
def plans(first_plan, monkeypatch):
    resumed = {f"{i:012x}" for i in range(3)}
    known = {tuple(FIRST): first_plan, tuple(RESUMED): resumed}
    monkeypatch.setattr(check_fresh, "planned_cells", lambda argv: known[tuple(argv)])
    return first_plan, resumed


def write_run(folder: Path, cells: set[str], resumed: bool) -> Path:
    folder.mkdir()
    manifest = {"argv": FIRST, "resumed": [{"argv": RESUMED}] if resumed else []}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "rows.jsonl").write_text("".join(json.dumps({"cell_id": c}) + "\n" for c in sorted(cells)))
    return folder


def test_rows_of_every_planned_cell_are_fresh_resumed_commands_included(tmp_path, plans):
    first, resumed = plans
    fresh, detail = check_fresh.check(write_run(tmp_path / "run", first | resumed, resumed=True))
    assert fresh, detail
    assert check_fresh.main([str(tmp_path / "run")]) == 0


def test_a_row_of_a_cell_no_longer_planned_is_not_fresh(tmp_path, plans):
    first, _ = plans
    stale = set(list(first)[1:]) | {"0123456789ab"}  # one row computed under another cell id
    fresh, detail = check_fresh.check(write_run(tmp_path / "run", stale, resumed=False))
    assert not fresh and "1 planned cells without a row, 1 rows' cells no longer planned" in detail
    assert check_fresh.main([str(tmp_path / "run")]) == 1


def test_a_planned_cell_without_a_row_is_not_fresh(tmp_path, plans):
    first, resumed = plans
    fresh, detail = check_fresh.check(write_run(tmp_path / "run", first, resumed=True))  # the resume's rows lost
    assert not fresh and f"{len(resumed)} planned cells without a row" in detail
