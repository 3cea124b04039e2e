"""Running and results: the scenario catalog, planning a suite into fingerprinted cells, executing
them into rows (appended and flushed per cell), the run folder's manifest, lock and resume state,
scoring, fingerprints and provenance. The CLI and the tests use the names re-exported here."""

from benchmark.running.catalog import SCENARIOS, SUITES, resolve_scenario, resolve_suite, scenario_data
from benchmark.running.execution import execute, run_attack, simulate_group
from benchmark.running.planning import (
    Cell,
    Group,
    Overrides,
    cell_files,
    check_scenario_inputs,
    check_suite,
    defense_stack,
    parse_overrides,
    plan,
    run_id_for,
)
from benchmark.running.rundir import (
    ResumeState,
    RunBusy,
    code_and_data,
    prepare_run_dir,
    read_manifest,
    resume_state,
    run_lock,
    write_manifest,
)

__all__ = [
    "SCENARIOS", "SUITES", "Cell", "Group", "Overrides", "ResumeState", "RunBusy", "cell_files", "check_scenario_inputs",
    "check_suite", "code_and_data", "defense_stack", "execute", "parse_overrides", "plan", "prepare_run_dir",
    "read_manifest", "resolve_scenario", "resolve_suite", "resume_state", "run_attack", "run_id_for", "run_lock",
    "scenario_data", "simulate_group", "write_manifest",
]
