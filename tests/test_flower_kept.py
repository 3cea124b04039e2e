"""A Flower node keeps the values its replies sent (its update, its finalized factors) and the ServerApp
hands them back by key (``benchmark.engines.kept``): the ops see the same values, and a node that lost
them (another process, evicted) gets them inline, with the in-process result either way."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr", reason="flwr is not installed (scripts/setup.sh installs it)")

from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from test_engine_flower_phases import PER_ROUND, BatchGrid, comparable  # noqa: E402

from benchmark.contract.stacks import build_defense  # noqa: E402
from benchmark.engines.kept import KEPT, Kept, NodeKeeps, ServerEcho  # noqa: E402
from benchmark.engines.records import read_harness  # noqa: E402
from benchmark.running.catalog import resolve_scenario  # noqa: E402


def test_a_node_resolves_its_own_keys_and_names_the_ones_it_lost():
    keeps = NodeKeeps()
    factors = {"m": torch.arange(6.0).reshape(2, 3)}
    keys = keeps.keep({"factors": factors, "dec_s": 0.1}, limit=2)
    assert set(keys) == {"factors"}
    harness = {"start": Kept(keys["factors"]), "rnd": 2}
    assert keeps.resolve(harness) == []
    assert torch.equal(harness["start"]["m"], factors["m"]) and harness["start"]["m"] is not factors["m"]
    for _ in range(2):  # two newer values push it out
        keeps.keep({"factors": {"m": torch.zeros(1)}}, limit=2)
    assert keeps.resolve({"start": Kept(keys["factors"])}) == ["start"]


def test_the_server_sends_a_key_only_to_the_node_that_holds_the_unchanged_object():
    echo = ServerEcho(limit=4)
    factors = {"m": torch.ones(3)}
    echo.register({"factors": factors, KEPT: {"factors": "k1"}}, node=7)
    assert echo.compress({"start": factors}, node=7) == {"start": Kept("k1")}
    assert echo.compress({"start": factors}, node=8)["start"] is factors  # another node never had it
    assert echo.compress({"start": dict(factors)}, node=7)["start"] is not None  # an equal copy is not the object
    assert not isinstance(echo.compress({"start": dict(factors)}, node=7)["start"], Kept)
    factors["m"].add_(1.0)  # the driver changed it after the node kept its copy: inline
    assert echo.compress({"start": factors}, node=7)["start"] is factors


class CountingGrid(BatchGrid):
    """A BatchGrid that counts the harness values that travel as keys, and (``forget``) clears the
    process's kept values before each batch, as a node whose ClientApp process is new each message."""

    def __init__(self, n_nodes: int, forget: bool) -> None:
        super().__init__(n_nodes)
        self.forget, self.keyed = forget, 0

    def push_messages(self, messages):
        from benchmark.engines import flower_client

        messages = list(messages)
        self.keyed += sum(isinstance(v, Kept) for m in messages for v in read_harness(m.content).values())
        if self.forget:
            flower_client.PROCESS_KEEPS.values.clear()
        return super().push_messages(messages)


def test_kept_values_give_the_in_process_run_whether_the_node_kept_them_or_not():
    from benchmark.engines import flower_sim, inproc

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = 1
    torch.set_num_threads(1)
    scenario = resolve_scenario("tiny", {"clients_per_round": PER_ROUND})
    runs = {}
    try:
        ref = inproc.build_driver(scenario, build_defense("plain_lora"), 0)
        want = ref.run()
        for forget in (False, True):
            grid = CountingGrid(scenario.n_clients, forget)
            got, link = flower_sim.build_driver(grid, scenario, build_defense("plain_lora"), 0, "cpu", 1)
            runs[forget] = (grid, got, got.run(), link)
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    for _, got, have, _ in runs.values():
        assert comparable(have.metrics) == comparable(want.metrics)
        assert [(m.kind, m.payload.nbytes()) for m in got.channel.transcript.messages] == \
            [(m.kind, m.payload.nbytes()) for m in ref.channel.transcript.messages]
    assert runs[False][0].keyed >= 3 * PER_ROUND  # starts, proposals and uploads went by key
    forgetful = runs[True][0]
    assert forgetful.keyed >= 3 * PER_ROUND and len(forgetful.batches) > len(runs[False][0].batches)  # resent inline
    assert runs[True][3].summary() == runs[False][3].summary()  # a resent call is not counted twice


def test_a_broadcast_counts_the_same_with_its_records_shared_or_built_per_message():
    from flwr.app import Message

    from benchmark.contract import WirePayload
    from benchmark.engines.records import content, message_bytes, message_sizes, payload_records

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = 1
    try:
        payload = WirePayload("server", plain={"m/A": torch.randn(4, 300)}, cipher={"m/c": [b"x" * 5000, b"y" * 7000]},
                              meta={"kind": "broadcast"})
        shared = payload_records(payload)
        together = [Message(content(payload, {"client": i}, shared), dst_node_id=i, message_type="query.finalize")
                    for i in range(3)]
        apart = [Message(content(payload, {"client": i, "pad": "z" * 999 * i}), dst_node_id=i,
                         message_type="query.finalize") for i in range(3)]
        sizes = message_sizes(together)
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    assert sizes == [message_bytes(m) for m in apart]  # the harness (however long) is never counted
    assert sizes[0] > payload.nbytes()
