"""End-to-end runs of the harness on the tiny scenario: rows, resume, failure isolation, report."""

import dataclasses
import json

import pytest

from benchmark.config import ComponentSpec
from benchmark.running import Overrides, execute, plan, resolve_suite, write_manifest
from benchmark.running.results import read_rows
from defenses import DEFENSES
from defenses.plain_lora import PlainLoRA, PlainServer

REQUIRED = ("run_id", "cell_id", "scenario", "defense", "attack", "attack_mode", "seed", "status", "error",
            "utility_metric", "utility", "rouge1", "rouge2", "rougeL", "token_recall", "exact_match",
            "bytes_up_per_client_round", "bytes_down_per_client_round", "cipher_bytes_up", "enc_s", "dec_s", "agg_s",
            "train_s", "attack_s", "peak_rss_mb", "epsilon", "encrypted_fraction", "git_commit",
            "threat_init", "observation", "probe_round", "probe_batch_size", "start_known", "server_saw")


class ExplodingServer(PlainServer):
    def aggregate(self, payloads):
        raise RuntimeError("planted failure")


class ExplodingDefense(PlainLoRA):
    """plain_lora that fails on the server side, to prove one bad cell does not stop a run."""

    name = "exploding_test"
    Server = ExplodingServer


@pytest.fixture
def exploding():
    DEFENSES.register("exploding_test", ExplodingDefense, force=True)
    yield
    DEFENSES.unregister("exploding_test")


def smoke_groups(defenses, seeds=(0,)):
    suite = dataclasses.replace(resolve_suite("smoke"), defenses=tuple(ComponentSpec(d, d) for d in defenses), seeds=seeds)
    return suite, plan(suite, Overrides({"rounds": 1}, {}, {}))


def test_rows_have_required_columns_and_a_failing_cell_does_not_stop_the_run(tmp_path, exploding):
    suite, groups = smoke_groups(["exploding_test", "plain_lora"])
    run_dir = tmp_path / "runs" / "r1"
    write_manifest(run_dir, suite, groups, ["shebench", "run"], "cpu")
    rows = execute(groups, run_dir, "cpu", quiet=True)
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "planted failure" in rows[0]["error"]
    assert (run_dir / "logs").exists()
    ok = rows[1]
    for col in REQUIRED:
        assert col in ok
    assert ok["utility_metric"] == "accuracy" and 0 <= ok["utility"] <= 1
    assert ok["bytes_up_per_client_round"] > 0 and ok["agg_rel_err"] < 1e-5
    assert (ok["threat_init"], ok["observation"], ok["probe_round"]) == ("server", "grad", 1)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {"argv", "git", "packages", "machine", "suite", "scenarios"} <= set(manifest)
    assert read_rows(run_dir / "rows.jsonl") == rows


def test_rerun_resumes_after_interruption(tmp_path):
    suite, groups = smoke_groups(["plain_lora"], seeds=(0, 1))
    run_dir = tmp_path / "runs" / "r2"
    first = execute(groups, run_dir, "cpu", quiet=True)
    assert len(first) == 2
    # Simulate a run killed while writing its second row: one full row and a torn line remain.
    path = run_dir / "rows.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:40])
    again = execute(groups, run_dir, "cpu", quiet=True)
    assert [r["seed"] for r in again] == [1]  # only the lost cell is recomputed
    assert again[0]["utility"] == pytest.approx(first[1]["utility"])  # seeded: same result
    assert execute(groups, run_dir, "cpu", quiet=True) == []  # nothing left to do


def test_one_simulation_serves_every_probe_batch_and_batch_size(tmp_path):
    """Probe cells are batch size x private batch; they share one simulation, see different private
    batches (references differ), and a resumed run finds them all finished."""
    suite = dataclasses.replace(resolve_suite("smoke"), defenses=(ComponentSpec("plain_lora", "plain_lora"),),
                                attacks=(ComponentSpec("dager", "dager"),), attack_modes=("naive",), seeds=(0,))
    over = Overrides({"rounds": 1, "threat": {"batch_sizes": [1, 2]}, "probe": {"batches": 2}}, {}, {})
    groups = plan(suite, over)
    assert len(groups) == 1
    cells = groups[0].cells
    assert sorted(c.probe for c in cells) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert len({c.cell_id for c in cells}) == 4
    run_dir = tmp_path / "r"
    rows = execute(groups, run_dir, "cpu", quiet=True)
    assert sorted((r["probe_batch_size"], r["probe_batch"]) for r in rows) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert all(r["status"] == "ok" for r in rows), [r["attack_note"] for r in rows]
    assert len({r["sim_s"] for r in rows}) == 1  # one simulation
    assert {r["n_reconstructed"] for r in rows if r["probe_batch_size"] == 2} <= {1, 2}
    assert not execute(groups, run_dir, "cpu", quiet=True)  # resume: nothing left to do


def test_probe_batches_are_disjoint_slices_of_one_permutation():
    from benchmark.federation.probe import probe_batch

    order = [5, 3, 9, 1, 7]
    assert probe_batch(order, 2, 0) == [5, 3] and probe_batch(order, 2, 1) == [9, 1]
    assert probe_batch(order, 2, 2) == [7, 5]  # wraps around once the shard is used up
    assert probe_batch(order, 8, 0) == order and probe_batch([], 2, 0) == []


def test_adaptive_reuses_naive_on_a_clear_view():
    suite = dataclasses.replace(resolve_suite("smoke"), defenses=(ComponentSpec("plain_lora", "plain_lora"),),
                                attacks=(ComponentSpec("dager", "dager"),), attack_modes=("naive", "adaptive"), seeds=(0,))
    groups = plan(suite, Overrides({"rounds": 1}, {}, {}))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        rows = {r["attack_mode"]: r for r in execute(groups, Path(tmp), "cpu", quiet=True)}
    assert rows["naive"]["rouge1"] == rows["adaptive"]["rouge1"]
    assert "computed once" in (rows["adaptive"]["attack_note"] or "")
    assert "computed once" not in (rows["naive"]["attack_note"] or "")
    assert rows["adaptive"]["attack_reused"] is True and "attack_reused" not in rows["naive"]


def test_scenario_seeds_replace_the_suite_seeds():
    from benchmark.config import ScenarioSpec

    suite = dataclasses.replace(resolve_suite("smoke"), scenarios=(ScenarioSpec("tiny", "a", seeds=(5,)), ScenarioSpec("tiny", "b")),
                                seeds=(0, 1))
    got = sorted((g.scenario.name, g.seed) for g in plan(suite, Overrides({}, {}, {})))
    assert got == [("a", 5), ("b", 0), ("b", 1)]



@pytest.mark.parametrize(("engine", "scenario", "over"), [
    ("inproc", "tiny", {"rounds": 1}),
    ("cost", "cost_public_bench", {"cost": {"repeats": 1, "sample_modules": 1}}),
])
def test_no_computed_metric_is_dropped_from_rows(engine, scenario, over):
    """Rows have a fixed schema (benchmark.running.results.COLUMNS); the runner keeps only its columns,
    so a metric an engine computes but the schema lacks would vanish: fail here instead."""
    from benchmark.contract.plugins import ENGINES
    from benchmark.contract.stacks import build_defense
    from benchmark.running import resolve_scenario
    from benchmark.running.results import COLUMNS

    sim = ENGINES.get(engine)(resolve_scenario(scenario, over), build_defense("plain_lora"), 0)
    assert sorted(set(sim.metrics) - set(COLUMNS)) == []
