"""The ``flower`` engine sends one phase's per-client messages together (every sampled client's
``train``, ``propose``, ``accept``, ``protect``, ``finalize`` of the broadcast, its start), so a
deployment's nodes wait and work side by side, and still gives the in-process transcript, bytes and
metrics: the driver meters and records every message in pick order before or after the phase, and the
replies are read in the calls' order whichever node answered first.

On a Grid in this process (no Ray: seconds) that answers each batch of messages last to first, as
nodes that finish out of order would: a client role whose results depended on the order its clients
were served in would show here (client-level DP draws each client's noise from its own stream)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr", reason="flwr is not installed (scripts/setup.sh installs it)")

from flwr.app import Context, Error, Message, RecordDict  # noqa: E402
from flwr.common.serde import message_from_proto, message_to_proto  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from benchmark.contract.stacks import build_defense  # noqa: E402
from benchmark.running.catalog import resolve_scenario  # noqa: E402

PER_ROUND = 3
EXACT = ("plain_lora", "dp")  # deterministic: every byte and float as in process
NOT_COMPARED = ("_s", "time_breakdown", "setup_costs", "transport", "framing", "engine_runtime")


class BatchGrid:
    """Flower's Grid without a runtime that keeps each ``push_messages`` batch (its message types and
    nodes) and answers a batch's messages last to first, each serialized and read back as a transport
    would, with its node's own Context."""

    def __init__(self, n_nodes: int) -> None:
        from benchmark.engines.flower_client import make_client_app

        self.app = make_client_app(in_memory=True)
        self.batches: list[list[tuple[str, int]]] = []
        self.replies: dict[str, Message] = {}
        self.contexts = {100 + i: Context(0, 100 + i, {"partition-id": i, "num-partitions": n_nodes}, RecordDict(), {})
                         for i in range(n_nodes)}

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages):
        messages = list(messages)
        self.batches.append([(m.metadata.message_type, m.metadata.dst_node_id) for m in messages])
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # as a SuperLink's Grid names a message
        for msg in reversed(messages):
            try:
                reply = self.app(message_from_proto(message_to_proto(msg)), self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # noqa: BLE001 (a runtime turns a ClientApp's exception into an error reply)
                reply = Message(Error(0, repr(exc)), reply_to=msg)
            self.replies[msg.metadata.message_id] = message_from_proto(message_to_proto(reply))
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


@pytest.fixture(scope="module")
def runs():
    """Each defense on the tiny scenario (3 of 4 clients per round, 2 rounds: round 2 has a client
    that missed round 1's aggregate) in process and on a BatchGrid; the drivers and the grids."""
    from benchmark.engines import flower_sim, inproc

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = 1  # a runtime sets them
    torch.set_num_threads(1)
    scenario = resolve_scenario("tiny", {"clients_per_round": PER_ROUND})
    out = {}
    try:
        for name in (*EXACT, "she_lora"):
            ref = inproc.build_driver(scenario, build_defense(name), 0)
            grid = BatchGrid(scenario.n_clients)
            got, _ = flower_sim.build_driver(grid, scenario, build_defense(name), 0, "cpu", 1)
            out[name] = (ref, ref.run(), got, got.run(), grid)
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    return out


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not any(t in k for t in NOT_COMPARED)}


@pytest.mark.parametrize("name", EXACT)
def test_a_phased_flower_run_has_the_in_process_transcript_and_metrics(runs, name):
    ref, ref_result, got, got_result, _ = runs[name]
    want, have = ref.channel.transcript.messages, got.channel.transcript.messages
    assert [(m.round, m.kind, m.direction, m.clients, m.payload.nbytes()) for m in have] == \
        [(m.round, m.kind, m.direction, m.clients, m.payload.nbytes()) for m in want]
    for a, b in zip(want, have, strict=True):
        assert a.payload.plain.keys() == b.payload.plain.keys()
        assert all(torch.equal(a.payload.plain[k], b.payload.plain[k]) for k in a.payload.plain), (a.round, a.kind)
    assert comparable(got_result.metrics) == comparable(ref_result.metrics)
    assert [r["clients"] for r in got_result.rounds] == [r["clients"] for r in ref_result.rounds]
    assert got_result.privacy_params() == ref_result.privacy_params()
    assert [len(v) for v in got.timings.values()] == [len(v) for v in ref.timings.values()]


def test_she_lora_phased_matches_in_process_up_to_ckks_noise(runs):
    ref, ref_result, got, got_result, _ = runs["she_lora"]
    want, have = ref.channel.transcript.messages, got.channel.transcript.messages
    assert [(m.round, m.kind, m.direction, m.clients) for m in have] == [(m.round, m.kind, m.direction, m.clients) for m in want]
    for key in ("bytes_up_per_client_round", "bytes_down_per_client_round", "cipher_bytes_up", "cipher_bytes_down"):
        assert got_result.metrics[key] == ref_result.metrics[key], key
    assert got_result.metrics["eval_loss"] == pytest.approx(ref_result.metrics["eval_loss"], rel=1e-5)


@pytest.mark.parametrize("name", [*EXACT, "she_lora"])
def test_each_phase_goes_out_as_one_batch(runs, name):
    """Per round: the participants' train, propose, protect and finalize of the broadcast (and accept,
    where the server replies to the proposals) each in one push of one message per participant, to
    as many nodes; round 1's starts (init) and round 2's re-sent aggregate too."""
    _, _, got, result, grid = runs[name]
    rounds, picks = len(result.rounds), [r["clients"] for r in result.rounds]
    by_kind: dict[str, list[int]] = {}
    for batch in grid.batches:
        assert len({kind for kind, _ in batch}) == 1, batch  # a batch is one phase
        assert len({node for _, node in batch}) == len(batch), batch  # one message per client (a node each here)
        by_kind.setdefault(batch[0][0].removeprefix("query."), []).append(len(batch))
    assert by_kind["train"] == [PER_ROUND] * rounds
    assert by_kind["propose"] == [PER_ROUND] * rounds
    for kind in ("protect", "finalize"):  # besides the probe's upload and the referee's own finalize
        assert by_kind[kind].count(PER_ROUND) == rounds, (kind, by_kind[kind])
    assert by_kind.get("accept", []) == ([PER_ROUND] * rounds if name == "she_lora" else [])
    target = got.schedule.probe_client
    assert sum(by_kind["init"]) == len(set(picks[0]) | {target})  # the probe's target first, then the rest at once
    missed = set(picks[1]) - set(picks[0]) - {target}
    assert missed and len(missed) in by_kind["finalize"]  # round 2's newcomers take round 1's aggregate together
