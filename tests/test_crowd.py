"""A crowd of clients with few sampled per round (``tiny_crowd1000``): nothing is built or kept for a
client that is not sampled, so what a round holds does not grow with the clients that sit it out.

Every check is a count of structures (clients touched, starts held, payloads recorded, nodes mapped),
never a timing or an RSS reading: ``benchmark/asv_bench/crowd.py`` measures those."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

from benchmark.config import PartitionConfig
from benchmark.contract.stacks import build_defense
from benchmark.federation.assets import build_assets
from benchmark.federation.data import partition
from benchmark.federation.driver import RoundDriver
from benchmark.federation.node import ClientNode
from benchmark.federation.protocol import setup_roles
from benchmark.federation.referee import ModelReferee
from benchmark.federation.sampling import Schedule, sample_round
from benchmark.running import resolve_scenario

ROUNDS, PER_ROUND, EXAMPLES = 2, 20, 3000


class CountingNode(ClientNode):
    """A ``ClientNode`` that counts, per client, every call that builds or uses that client's state
    (its start, its shard and local training, its protected upload, its finalized aggregate)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.touched: Counter[int] = Counter()

    def init(self, client, message):
        self.touched[client.client_id] += 1
        return super().init(client, message)

    def train(self, client, rnd, start, head):
        self.touched[client.client_id] += 1
        return super().train(client, rnd, start, head)

    def protect(self, update):
        self.touched[update.client.client_id] += 1
        return super().protect(update)

    def finalize(self, message, client, *, harness=False):
        self.touched[client.client_id] += 1
        return super().finalize(message, client, harness=harness)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """Enough labelled lines for 1000 clients (the synthetic set has 280), written as a user's CSV."""
    path = tmp_path_factory.mktemp("crowd") / "crowd.csv"
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["text", "label"])
        for i in range(EXAMPLES + 24):
            out.writerow([f"message {i} was {'great' if i % 2 else 'awful'}", "pos" if i % 2 else "neg"])
    return str(path)


def crowd(n_clients: int, texts: str):
    """``tiny_crowd1000`` in this process with ``n_clients`` clients and the same data, two rounds run."""
    scenario = resolve_scenario("tiny_crowd1000", {
        "engine": "inproc", "n_clients": n_clients, "clients_per_round": PER_ROUND, "rounds": ROUNDS,
        "data": {"path": texts, "max_examples": EXAMPLES}, "train": {"local_steps": 1}})
    defense = build_defense("plain_lora")
    assets = build_assets(scenario, 0)
    node = CountingNode(defense.client, lambda: assets)
    driver = RoundDriver(assets.fed, defense.server, node, ModelReferee(assets), Schedule.sampled(scenario, 0))
    setup_roles(driver.parties, driver.fed, driver.channel)
    picks = [driver.run_round(rnd)["clients"] for rnd in range(1, ROUNDS + 1)]
    return scenario, assets, node, driver, picks


@pytest.fixture(scope="module")
def runs(texts):
    return {n: crowd(n, texts) for n in (100, 1000)}


def test_the_scenario_has_a_thousand_clients_on_flower_and_a_sample_of_tens():
    scenario = resolve_scenario("tiny_crowd1000")
    assert scenario.n_clients == 1000 and 20 <= scenario.clients_per_round <= 50
    assert scenario.engine == "flower" and scenario.model.name == "tiny_llama"


def test_only_the_sampled_clients_are_touched(runs):
    scenario, assets, node, driver, picks = runs[1000]
    sampled = {c for p in picks for c in p}
    assert picks == [sample_round(scenario, 0, rnd) for rnd in range(1, ROUNDS + 1)]
    assert set(node.touched) == sampled  # every participant trained, nobody else was ever called
    assert len(sampled) <= ROUNDS * PER_ROUND < 1000
    assert len(assets.host.model.peft_config) == len({t.rank for t in scenario.tiers})  # adapters per rank, not per client


def test_the_driver_keeps_starts_of_the_last_round_only(runs):
    """A start outlives its round only while its client holds the latest aggregate: the next time an
    absent client is sampled it is sent the aggregate again. Before the fix every client ever sampled
    kept its start."""
    _, _, _, driver, picks = runs[1000]
    assert set(driver.start) == set(picks[-1])
    assert set(driver.round_starts) == set(picks[-1])


def test_what_a_round_records_does_not_grow_with_unsampled_clients(runs):
    """Same rounds and sample size, 100 or 1000 clients: the same number of distinct payloads in the
    transcript (the aggregate re-sent to a client that missed it shares the recorded copy; with 1000
    clients nearly every participant missed it, with 100 far fewer did), and starts held for at most a
    round's participants."""
    held = {}
    for n, (_, _, _, driver, _) in runs.items():
        messages = driver.channel.transcript.messages
        resent = sum(1 for m in messages if m.kind == "broadcast" and m.round == 2 and len(m.clients) == 1)
        payloads = {id(m.payload): m.payload for m in messages}
        held[n] = (len(payloads), len(driver.start), resent)
        assert len(driver.start) <= PER_ROUND
    assert held[100][0] == held[1000][0]  # distinct payloads: setup, inits, uploads, one broadcast a round
    assert held[100][2] < held[1000][2]  # the crowd re-sends more often, yet records no extra copy


def test_dirichlet_top_up_gives_what_the_plain_rule_gives():
    """The heap that tops up starved clients picks the donor the plain rule picks (the largest part,
    the lowest-numbered among equals), so splits made before it are unchanged."""

    def plain(labels, n_clients, alpha, seed):
        from benchmark.federation.seeding import rng

        gen = rng(seed, "partition")
        y = np.asarray(labels)
        parts = [[] for _ in range(n_clients)]
        for cls in np.unique(y):
            idx = gen.permutation(np.flatnonzero(y == cls))
            cuts = (np.cumsum(gen.dirichlet([alpha] * n_clients)) * len(idx)).astype(int)[:-1]
            for c, chunk in enumerate(np.split(idx, cuts)):
                parts[c].extend(chunk.tolist())
        for c in range(n_clients):
            while len(parts[c]) < 2:
                donor = max(range(n_clients), key=lambda k: len(parts[k]))
                parts[c].append(parts[donor].pop())
        return [sorted(p) for p in parts]

    for seed, (n_clients, n, alpha) in enumerate([(6, 40, 0.5), (100, 256, 0.5), (300, 700, 0.1), (50, 100, 0.05)]):
        labels = np.random.default_rng(seed).integers(0, 3, n).tolist()
        got = partition(labels, n_clients, PartitionConfig("dirichlet", alpha), seed)
        assert got == plain(labels, n_clients, alpha, seed), (n_clients, n, alpha)
        assert min(len(p) for p in got) >= 2


class HelloGrid:
    """A Grid whose nodes answer only ``hello``, each with its partition (node id -> partition-id)."""

    def __init__(self, partition_of: dict[int, int], of: dict[int, int] | int) -> None:
        self.partition_of, self.of, self.sent = partition_of, of, 0

    def get_node_ids(self) -> list[int]:
        return list(self.partition_of)

    def push_messages(self, messages):
        """Answer at once; the message ids are the node ids (one hello per node)."""
        from types import SimpleNamespace

        from benchmark.engines.records import content

        self.replies = []
        for m in messages:
            self.sent += 1
            node = m.metadata.dst_node_id
            of = self.of if isinstance(self.of, int) else self.of[node]
            self.replies.append(SimpleNamespace(
                metadata=SimpleNamespace(src_node_id=node, reply_to_message_id=node), has_error=lambda: False,
                content=content(None, {"partition": self.partition_of[node], "of": of})))
        return [m.metadata.dst_node_id for m in messages]

    def pull_messages(self, ids):
        got, self.replies = [r for r in self.replies if r.metadata.reply_to_message_id in ids], []
        return got


@pytest.mark.parametrize("n_nodes", [1000, 7])
def test_the_flower_link_maps_clients_through_partitions(monkeypatch, n_nodes):
    """The ServerApp's link keeps one entry per node (partition-id -> node) and finds a client's node
    as ``client % num-partitions``: one hello per node, no table per client."""
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity

    from benchmark.engines.flower_client import NodeSpec
    from benchmark.engines.flower_sim import FlowerLink

    for key in ("_run_id", "_node_id", "_task_id"):  # a Message outside a Flower run needs them
        monkeypatch.setattr(TaskIdentity, key, 1)
    scenario = resolve_scenario("tiny_crowd1000")
    nodes = {5000 + 3 * p: p for p in reversed(range(n_nodes))}  # node ids unrelated to partitions
    grid = HelloGrid(nodes, n_nodes)
    link = FlowerLink(grid, NodeSpec("t", scenario, None, 0, "cpu", 1), timeout=5)
    assert grid.sent == n_nodes and len(link.nodes) == n_nodes and link.partitions == n_nodes
    for cid in (0, 1, 6, 7, 999):
        assert nodes[link.node_of(cid)] == cid % n_nodes
    mixed = HelloGrid({1: 0, 2: 1}, {1: 2, 2: 3})
    with pytest.raises(RuntimeError, match="disagree on num-partitions"):
        FlowerLink(mixed, NodeSpec("t", scenario, None, 0, "cpu", 1), timeout=5)
