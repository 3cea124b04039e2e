"""The run-time estimate (benchmark/running/estimate.py), the --shard split and what --dry-run prints.
Hand-made rows only: no model runs, no timing."""

import pytest

from benchmark.cli import main
from benchmark.config import ConfigError
from benchmark.running import estimate as E
from benchmark.running.sharding import parse_shard, shard_indices


def row(attack="dager", defense="plain_lora", mode="naive", batch=4, observation="grad", rnd=1, rank=256, attack_s=10.0,
        scenario="r1", seed=0, sim_s=100.0, status="ok", **extra):
    return {"scenario": scenario, "defense": defense, "attack": attack, "attack_mode": mode, "seed": seed, "status": status,
            "probe_batch_size": batch, "observation": observation, "probe_round": rnd, "probe_rank": rank,
            "attack_s": attack_s, "sim_s": sim_s, "eval_s": 20.0, "probe_s": 30.0, **extra}


SCEN = {"kind": "federated", "model": {"name": "smollm2"}, "rounds": 1, "clients_per_round": 3,
        "data": {"test_examples": 64}, "threat": {"observation": "grad", "batch_sizes": [4]}, "probe": {"batches": 1}}


def manifest(run_id, scenarios=("r1",), attacks=(("dager", "dager"),)):
    return {"run_id": run_id, "scenarios": {s: SCEN for s in scenarios},
            "suite": {"attacks": [{"name": n, "label": lab} for lab, n in attacks]},
            "machine": {"cpu": "test cpu", "cpu_count": 2, "torch_threads": 1}}


def key(attack="dager", defense="plain_lora", mode="naive", batch=4, observation="grad", rnd=1, rank=256, name=None):
    return E.CaseKey(attack, name or attack, defense, mode, batch, observation, rnd, rank)


def one_case(case, runs):
    planned = [E.PlannedSim(E.SimKey("r1", case.defense, "federated:smollm2"), E.work_of(SCEN), (("c", case),))]
    return E.estimate(planned, E.reference_from_rows(runs)).cells["c"]


def stamped(rows, when):
    return [{**r, "finished_at": when} for r in rows]


def test_the_first_rung_that_matches_gives_the_median_of_its_rows():
    rows = [row(attack_s=s) for s in (10.0, 30.0, 20.0)] + [row(defense="dp", attack_s=99.0)]
    est = one_case(key(), [(rows, manifest("a"))])
    assert (est.seconds, est.n) == (20.0, 3) and est.source.startswith("exact")


@pytest.mark.parametrize("planned, source, seconds", [
    (key(defense="she_lora"), "any defense", 7.0),  # no she_lora row: the same case against other defenses
    (key(defense="she_lora", mode="adaptive"), "any defense, mode", 7.0),
    (key(observation="sgd", rnd=2), "any threat", 5.0),  # plain_lora naive b4 rank 256, any threat
    (key(defense="she_lora", observation="sgd", rnd=2), "any threat, defense, mode", 6.0),
    (key(defense="she_lora", rank=64), "any rank, defense, mode", 7.0),
    (key(defense="she_lora", observation="sgd", rnd=2, rank=64), "same attack and batch", 6.0),
    (key(attack="dager_strict", name="dager", batch=4, rank=64), "same attack name and batch", 6.0),
    (key(attack="dager_strict", name="dager", batch=32), "same attack, any batch", 7.0),
])
def test_fallbacks_go_down_the_stated_order(planned, source, seconds):
    rows = [row(defense="dp", attack_s=7.0), row(defense="dp", attack_s=9.0), row(defense="maskcrypt", attack_s=3.0),
            row(observation="sgd", rnd=1, attack_s=5.0), row(batch=8, attack_s=50.0)]
    est = one_case(planned, [(rows, manifest("a"))])
    assert est.source.split(",")[0] == source.split(",")[0] and est.source.startswith(source), est
    assert est.seconds == seconds


def test_a_case_nothing_matches_is_unknown_not_zero_and_totals_keep_it_apart():
    rows = [row(attack="fedspy", attack_s=4.0)]
    ref = E.reference_from_rows([(rows, manifest("a", attacks=(("fedspy", "fedspy"),)))])
    planned = [E.PlannedSim(E.SimKey("r1", "plain_lora", "federated:smollm2"), E.work_of(SCEN),
                            (("known", key(attack="fedspy")), ("unknown", key(attack="utr"))))]
    est = E.estimate(planned, ref)
    assert est.cells["unknown"] == E.Estimate(None, "unknown")
    total = E.total(planned, est)
    assert total.unknown == 1 and total.seconds == pytest.approx(4.0 + est.sims[0].seconds)
    text = "\n".join(E.format_estimate(planned, est, ref))
    assert "1 pieces unknown, not counted" in text and "unknown" in text


def test_rows_that_cost_nothing_make_a_free_cell_only_where_defense_and_mode_match():
    reused = row(mode="adaptive", attack_s=40.0, attack_reused=True)  # copies the naive row's time
    rows = [row(attack_s=40.0), reused, row(defense="full_he", attack_s=None, status="incompatible")]
    runs = [(rows, manifest("a"))]
    assert one_case(key(mode="adaptive"), runs).seconds == 0.0
    assert "reused" in one_case(key(mode="adaptive"), runs).source
    assert one_case(key(defense="full_he"), runs).source.startswith("0: incompatible")
    assert one_case(key(defense="she_lora", mode="adaptive"), runs).seconds == 40.0  # a computed time, never the copy


def test_failed_rows_are_left_out_and_the_newest_run_wins_within_a_rung():
    old = stamped([row(attack_s=100.0), row(attack_s=80.0, status="failed"), row(attack_s=1.0, batch="four")],
                  "2026-12-01T00:00:00")
    new = stamped([row(attack_s=10.0)], "2026-12-07T00:00:00")
    est = one_case(key(), [(old, manifest("old")), (new, manifest("new"))])
    assert est.seconds == 10.0 and est.source == "exact, new"
    est = one_case(key(), [(old, manifest("old"))])
    assert est.seconds == 100.0 and est.n == 1


def test_within_one_resumed_run_the_newest_invocation_wins():
    m = {**manifest("a"), "written_at": "2026-12-01T00:00:00+00:00", "resumed": [{"at": "2026-12-05T00:00:00+00:00"}]}
    rows = stamped([row(attack_s=90.0), row(attack_s=70.0)], "2026-12-01T01:00:00+00:00") + \
        stamped([row(attack_s=9.0)], "2026-12-05T01:00:00+00:00")
    est = one_case(key(), [(rows, m)])
    assert (est.seconds, est.n) == (9.0, 1)


def test_a_simulation_scales_each_part_by_its_work_and_falls_back_to_the_same_model():
    rows = [row(scenario="r1", sim_s=150.0)]  # rest 100 (3 client-rounds), eval 20 (64), probe 30 (1 case)
    ref = E.reference_from_rows([(rows, manifest("a"))])
    bigger = E.Work(client_rounds=6, test_examples=512, probe_cases=3)
    planned = [E.PlannedSim(E.SimKey("r1", "plain_lora", "federated:smollm2"), E.work_of(SCEN), ()),
               E.PlannedSim(E.SimKey("regime", "plain_lora", "federated:smollm2"), bigger, ()),
               E.PlannedSim(E.SimKey("regime", "she_lora", "federated:smollm2"), bigger, ()),
               E.PlannedSim(E.SimKey("cost", "plain_lora", "cost:openllama"), E.Work(), ())]
    sims = E.estimate(planned, ref).sims
    assert sims[0].seconds == pytest.approx(150.0) and sims[0].source.startswith("same scenario and defense")
    assert sims[1].seconds == pytest.approx(100 * 2 + 20 * 8 + 30 * 3) and sims[1].source.startswith("same model and defense")
    assert sims[2].source.startswith("same model,") and sims[2].seconds == sims[1].seconds
    assert sims[3] == E.Estimate(None, "unknown")


def test_a_simulation_is_guided_only_by_rows_of_its_own_engine():
    """A Flower deployment's wall (network, polling) says nothing of an in-process simulation's, nor the
    reverse; Flower's simulation runtime and a deployment are kept apart too."""
    rows = [row(sim_s=400.0, engine="flower", engine_runtime="deployment"), row(sim_s=250.0, engine="flower",
            engine_runtime="simulation")]
    ref = E.reference_from_rows([(rows, manifest("a"))])
    sims = E.estimate([E.PlannedSim(E.SimKey("r1", "plain_lora", "federated:smollm2"), E.work_of(SCEN), ()),
                       E.PlannedSim(E.SimKey("r1", "plain_lora", "federated:smollm2", "flower"), E.work_of(SCEN), ())],
                      ref).sims
    assert sims[0] == E.Estimate(None, "unknown")
    assert sims[1].seconds == pytest.approx(250.0)
    ref = E.reference_from_rows([(rows + [row(sim_s=150.0)], manifest("a"))])
    assert E.estimate([E.PlannedSim(E.SimKey("r1", "plain_lora", "federated:smollm2"), E.work_of(SCEN), ())],
                      ref).sims[0].seconds == pytest.approx(150.0)


def test_work_counts_come_from_the_resolved_scenario():
    assert E.work_of(SCEN) == E.Work(3, 64, 1)
    assert E.work_of({**SCEN, "threat": {"observation": "grad", "batch_sizes": [4, 8, 16]}, "probe": {"batches": 6}}).probe_cases == 18
    assert E.work_of({**SCEN, "threat": {"observation": "upload", "batch_sizes": [4, 8]}}).probe_cases == 1
    assert E.work_of({}) == E.Work(0, 0, 0)


# ---- --shard --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_partition_the_simulations_disjointly_and_completely(n):
    buckets = [(s, d) for s in ("regime", "r1") for seed in range(5) for d in ("plain", "she", "mask", "dp")]
    parts = [shard_indices(buckets, k, n) for k in range(1, n + 1)]
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(len(buckets)))  # complete, and no position twice
    assert all(p == sorted(p) for p in parts)  # each shard runs in plan order
    for b in set(buckets):  # every bucket's simulations spread evenly (not every other defense on one shard)
        counts = [sum(buckets[i] == b for i in p) for p in parts]
        assert max(counts) - min(counts) <= 1, (b, counts)


def test_shard_flag_parses_k_of_n():
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="--shard expects K/N"):
            parse_shard(bad)


def _cells(out):
    return {ln.split()[0] for ln in out.splitlines() if "seed=" in ln}


def test_dry_run_prints_estimates_and_shards_split_the_cells(capsys, tmp_path):
    args = ["run", "--scenario", "tiny", "--defense", "plain_lora,dp,she_lora", "--attack", "dager", "--dry-run",
            "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "estimated total, 1 process:" in out and "estimated total, 2 processes side by side" in out
    assert all("  ~" in ln for ln in out.splitlines() if "seed=" in ln)  # every cell carries its seconds (or ~unknown)
    whole = _cells(out)
    shards = []
    for k in (1, 2):
        assert main([*args, "--shard", f"{k}/2"]) == 0
        out = capsys.readouterr().out
        assert f"-shard{k}of2" in out and "estimated total, 1 process:" in out
        shards.append(_cells(out))
    assert shards[0] and shards[1] and not shards[0] & shards[1] and shards[0] | shards[1] == whole
    assert main([*args, "--shard", "4/4"]) == 2  # 3 simulations: a fourth shard would be empty
    assert "would be empty" in capsys.readouterr().err


# ---- the progress bar -----------------------------------------------------------------------------


def test_the_bar_counts_estimated_seconds_and_leaves_finished_work_out_of_its_pace():
    from benchmark.config import ComponentSpec
    from benchmark.running.execution import _Bar
    from benchmark.running.planning import Cell, Group

    d = ComponentSpec("plain_lora", "plain_lora")
    cells = [Cell(f"c{i}", "tiny", d, None, "", 0) for i in range(4)]
    groups = [Group(None, d, 0, tuple(cells[:2])), Group(None, d, 1, tuple(cells[2:]))]
    weights = ([100.0, 50.0], {"c0": 5.0, "c1": 5.0, "c2": 1.0, "c3": 1.0})
    bar = _Bar(groups, {"c0", "c1", "c2"}, weights, quiet=True)  # group 0 finished, group 1 half
    assert bar.work == 162.0 and bar.before == 111.0 and bar.done_cells == 3
    bar.advance(50.0)
    bar.advance(bar.cell(cells[3]), cells=1)
    assert bar.done_work == 162.0 and bar._desc() == "4/4 cells"
    plain = _Bar(groups, set(), None, quiet=True)  # no estimate: a bar of cells
    assert plain.work == 4 and plain.before == 0
