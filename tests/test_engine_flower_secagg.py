"""``secagg`` and ``dp+secagg`` on the ``flower`` engine run Flower's own SecAgg+ (``SecAggPlusWorkflow``
and ``secaggplus_mod``) and match the in-process protocol on the tiny scenario: the same utility, the
same masked uploads byte for byte but for the ``num_examples`` Flower sends beside them, and a server
transcript from which the round's sum can be unmasked with nothing else. Dropouts (on a Grid in this
process, no Ray) end the round with the client and stage that failed.

Tolerance: the two engines quantize with different stochastic rounding (each entry of the mean moves
by at most 2 * clipping_range / 2^30 ~ 2e-9 at the defaults) and everything else (training, DP
noise streams, masks that cancel exactly) is identical, so the evaluation loss may differ only in
its last digits and accuracy by no more than one test example."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.supercore.task_identity import TaskIdentity

from benchmark.running.catalog import resolve_scenario
from defenses.dp import ClientLevelDP, ClientLevelDPParams
from defenses.secagg import SecAgg, SecAggParams, dense_vectors
from defenses.secagg_protocol import RoundConfig, unmask_sum

pytest.importorskip("ray", reason="ray (Flower's simulation runtime) is not installed (scripts/setup.sh installs it)")

ROUNDS, PER_ROUND = 2, 3
DEFENSES = {
    "secagg": SecAgg,
    "dp+secagg": lambda: ClientLevelDP.over(SecAgg(), ClientLevelDPParams(sigma=0.05)),
}


@pytest.fixture(scope="module")
def runs():
    """Each defense on the tiny scenario (3 of 4 clients per round, 2 rounds) in process and on one
    Flower simulation runtime; the drivers, for their transcripts."""
    from benchmark.engines import flower_sim, inproc

    torch.set_num_threads(1)
    scenario = resolve_scenario("tiny", {"rounds": ROUNDS, "clients_per_round": PER_ROUND})
    ref = {}
    for name, make in DEFENSES.items():
        driver = inproc.build_driver(scenario, make(), 0)
        ref[name] = (driver, driver.run())

    def body(grid):
        out = {}
        for name, make in DEFENSES.items():
            driver, link = flower_sim.build_driver(grid, scenario, make(), 0, "cpu", 1)
            result = driver.run()
            result.metrics.update(link.summary())
            out[name] = (driver, result)
        return out

    return ref, flower_sim.on_simulation_runtime(body, scenario.n_clients, 1)


def _uploads(driver):
    return {(m.round, m.clients[0]): m.payload for m in driver.channel.transcript.messages if m.kind == "upload"}


@pytest.mark.parametrize("name", list(DEFENSES))
def test_flower_secagg_gives_the_in_process_utility(runs, name):
    (_, ref), (_, got) = runs[0][name], runs[1][name]
    assert got.metrics["eval_loss"] == pytest.approx(ref.metrics["eval_loss"], rel=1e-4)
    assert abs(got.metrics["utility"] - ref.metrics["utility"]) <= 1 / 24 + 1e-12  # one of 24 test examples
    # the attack probe (a secure round of every participant's probe update) sees the same on both
    assert got.metrics["server_saw"] == ref.metrics["server_saw"]
    assert got.metrics["start_known"] == ref.metrics["start_known"]
    if name == "secagg":
        assert got.metrics["agg_rel_err"] < 1e-4 and ref.metrics["agg_rel_err"] < 1e-4
    else:  # agg_rel_err counts the DP noise, the same noise streams on both engines
        assert got.metrics["agg_rel_err"] == pytest.approx(ref.metrics["agg_rel_err"], rel=1e-3)
        assert got.privacy["level"] == ref.privacy["level"] == "distributed"
        assert got.privacy["epsilon"] == ref.privacy["epsilon"]


@pytest.mark.parametrize("name", list(DEFENSES))
def test_flower_uploads_are_the_in_process_masked_vectors_plus_num_examples(runs, name):
    """Each (round, client)'s upload: the same int64 masked arrays and metadata; Flower's FitRes adds
    the client's ``num_examples`` in the clear, the only bytes more (15 to 20 per upload)."""
    (ref_driver, ref), (driver, got) = runs[0][name], runs[1][name]
    flower, inproc = _uploads(driver), _uploads(ref_driver)
    assert set(flower) == set(inproc) and len(flower) == ROUNDS * PER_ROUND
    extra = []
    for key, up in flower.items():
        assert up.cipher_bytes() == inproc[key].cipher_bytes()
        meta = dict(up.meta)
        n = meta.pop("num_examples")
        assert meta == inproc[key].meta and n > 0
        extra.append(up.nbytes() - inproc[key].nbytes())
        assert extra[-1] == len(f',"num_examples":{n}')
    assert got.metrics["bytes_up_per_client_round"] == pytest.approx(
        ref.metrics["bytes_up_per_client_round"] + sum(extra) / len(extra))
    # Flower's own message bytes for the same payloads (the records' framing) are reported beside them
    assert 0 < got.metrics["framing_overhead_frac"] < 0.5


def test_the_flower_transcript_alone_unmasks_the_last_rounds_sum(runs):
    """Keys, encrypted shares, masked vectors and unmask shares are all in the server's transcript:
    the round's weighted mean follows from them and the public settings, and it is the clients'
    weighted dense deltas up to quantization."""
    driver, _ = runs[1]["secagg"]
    last = [m for m in driver.channel.transcript.messages if m.round == ROUNDS]
    stages = {(m.direction, m.payload.meta.get("stage")) for m in last if m.kind == "negotiation"}
    assert stages == {(d, s) for d in ("down", "up") for s in ("setup", "share_keys", "collect_masked_vectors", "unmask")} - {("up", "collect_masked_vectors")}
    keys = [m.payload for m in last if m.direction == "up" and m.payload.meta.get("stage") == "setup"]
    assert all(set(p.cipher) == {"pk1", "pk2"} for p in keys) and len(keys) == PER_ROUND
    shares: dict[int, list[bytes]] = {}
    for m in last:
        if m.direction == "up" and m.payload.meta.get("stage") == "unmask":
            for cid, share in zip(m.payload.meta["nids"], m.payload.cipher["shares"], strict=True):
                shares.setdefault(cid, []).append(share)
    uploads = [m.payload for m in last if m.kind == "upload"]
    masked = [[bytes_to_ndarray(b) for b in p.cipher["masked"]] for p in uploads]
    active = sorted(p.meta["client_id"] for p in uploads)
    cfg = RoundConfig(**SecAgg().secret_sum(PER_ROUND).secagg_plus)
    mean = unmask_sum(masked, shares, active, {c: set(active) for c in active}, {}, cfg)
    updates = [driver.results[c].update for c in active]
    total = sum(u.n_samples for u in updates)
    names = uploads[0].meta["modules"]
    truth = [sum(v * (u.n_samples / total) for v, u in zip(vs, updates))
             for vs in zip(*(dense_vectors(u, names) for u in updates))]
    step = 2 * cfg.clipping_range / cfg.quantization_range
    for got, want in zip(mean, truth, strict=True):
        assert np.abs(got - want).max() < PER_ROUND * step + 1e-3 * np.abs(want).max()
    # a single masked vector says nothing of its client's update: its entries span the modulus
    assert np.asarray(masked[0][1]).max() > cfg.modulus_range // 4


# ---- failures, on a Grid in this process (no Ray: seconds) -------------------------------------


class LocalGrid:
    """Flower's Grid without a runtime: each message, serialized and read back as a transport would,
    goes to the ClientApp with its node's own Context (where ``secaggplus_mod`` keeps its state);
    ``fail(message)`` true: the node answers with an error instead (it dropped)."""

    def __init__(self, n_nodes, fail=lambda message: False):
        from benchmark.engines.flower_client import make_client_app

        self.app, self.fail = make_client_app(in_memory=True), fail
        self.replies = {}  # message id -> its reply, until pulled
        self.contexts = {100 + i: Context(0, 100 + i, {"partition-id": i, "num-partitions": n_nodes}, RecordDict(), {})
                         for i in range(n_nodes)}

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        """Each message answered at once; its reply waits for ``pull_messages``."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # as a Grid names a message it sends
            try:
                if self.fail(msg):
                    raise ConnectionError(f"node {msg.metadata.dst_node_id} dropped")
                reply = self.app(message_from_proto(message_to_proto(msg)), self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # noqa: BLE001 (a runtime turns a ClientApp's exception into an error reply)
                reply = Message(Error(0, repr(exc)), reply_to=msg)
            self.replies[msg.metadata.message_id] = message_from_proto(message_to_proto(reply))
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


@pytest.fixture
def local_grid():
    """Messages built outside a ServerApp need Flower's task identity (a runtime sets it); restored after."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = 1
    yield LocalGrid
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _stage(msg):
    return msg.metadata.message_type == "train" and msg.content.config_records["secaggplus_configs"]["stage"]


def _round_one(grid, params=None):
    from benchmark.engines import flower_sim

    torch.set_num_threads(1)
    driver, _ = flower_sim.build_driver(grid, _scenario(), SecAgg(params), 0, "cpu", 1)
    return driver.run()


def _scenario():
    return resolve_scenario("tiny", {"rounds": 1, "clients_per_round": PER_ROUND})


def test_a_client_failing_before_its_masked_vector_is_named_with_its_stage(local_grid):
    first = []

    def fail_one(msg):
        if _stage(msg) == "collect_masked_vectors":
            first.append(msg.metadata.dst_node_id)
            return msg.metadata.dst_node_id == first[0]
        return False

    with pytest.raises(RuntimeError, match=r"round 1: client \d in stage collect_masked_vectors: ConnectionError"):
        _round_one(local_grid(4, fail_one))


def test_too_few_clients_left_end_the_round_with_flowers_reasons(local_grid):
    keep = []

    def fail_all_but_one(msg):
        if _stage(msg) == "share_keys":
            keep.append(msg.metadata.dst_node_id)
            return msg.metadata.dst_node_id != keep[0]
        return False

    with pytest.raises(RuntimeError, match=r"round 1: client \d in stage share_keys"):
        _round_one(local_grid(4, fail_all_but_one))


def test_a_round_on_a_local_grid_equals_the_in_process_round(local_grid):
    """The same path without Ray: what a quick check of the Flower SecAgg+ engine can run."""
    from benchmark.engines import inproc

    got = _round_one(local_grid(4)).metrics
    ref = inproc.build_driver(_scenario(), SecAgg(), 0).run().metrics
    assert got["eval_loss"] == pytest.approx(ref["eval_loss"], rel=1e-4)
    assert 15 <= got["bytes_up_per_client_round"] - ref["bytes_up_per_client_round"] <= 20


def test_a_simulated_dropout_leaves_flowers_workflow_the_in_process_survivors_sum(local_grid):
    """``secagg.dropouts=1``: the same client vanishes after sharing on both engines; Flower's workflow
    rebuilds its pairwise masks from the survivors' shares, and the round is the in-process one."""
    from benchmark.engines import inproc

    params = SecAggParams(dropouts=1)
    got = _round_one(local_grid(4), params)
    ref = inproc.build_driver(_scenario(), SecAgg(params), 0).run()
    assert got.rounds[0]["silent"] == ref.rounds[0]["silent"] and len(got.rounds[0]["silent"]) == 1
    assert got.metrics["eval_loss"] == pytest.approx(ref.metrics["eval_loss"], rel=1e-4)
    assert got.metrics["agg_rel_err"] < 1e-4  # against the survivors' aggregate
    assert 15 <= got.metrics["bytes_up_per_client_round"] - ref.metrics["bytes_up_per_client_round"] <= 20
