"""SecAgg+ on the ``flower`` engine: Flower's own ``SecAggPlusWorkflow`` in the ServerApp and
``secaggplus_mod`` in the ClientApp carry a round whose defense declares Flower's protocol
(``SecretSum.secagg_plus``: ``secagg``, ``dp+secagg``).

Why the workflow runs whole rounds, not our protocol's messages. The workflow is the server side of
all four stages (setup and key advertisement, key sharing, masked-vector collection, unmasking) and
the mod their client side; each stage is one ``Grid.send_and_receive`` to every participant, and the
mod computes the client's contribution only inside stage 2, by calling the ClientApp's ``train``
handler. So the round driver hands the whole masked-sum step to the engine (``RoundDriver``'s
``secure_sum``, instead of the defense's negotiate/exchange/upload/aggregate) and gets back the
uploads as the server received them and the broadcast; the defense keeps the two ends it owns:
``ClientRole.secret_summands`` (in the ``train`` handler: each module's dense delta, unweighted, with
a distributed-DP noise share when stacked under ``dp``) and ``ServerRole.aggregate_sum`` (the
unmasked weighted mean re-factorised and broadcast). Flower's code does the rest unchanged: its
weighting by ``num_examples / max_weight``, quantization, masks, Shamir shares and unmasking, with
the settings the defense resolves for the round (one Flower node per client: the protocol's
identities are node ids).

The server's transcript. ``RecordingGrid`` stands between the workflow and the Grid: every stage
message and reply is recorded through the run's ``Channel`` as the server sent or received it (node
ids translated to client ids): the setup configuration, public keys, encrypted shares to forward,
the survivor lists and unmask shares as ``negotiation`` traffic, the masked vectors as the round's
``upload`` (``cipher["masked"]``, the defense's upload metadata, plus ``num_examples``, which Flower
sends in the clear beside the masked vector: 15 to 20 bytes of metadata more than the in-process
upload, the only difference in its byte count). The attack probe's rounds (one secure round of every
participant's probe update, unmetered, on a transcript of their own: ``benchmark.federation.probe``)
still run the defense's own protocol, its messages carried as Flower messages by ``FlowerClients``
(``propose``, ``answer``, ``protect``): an observation, not the federation's traffic, and the same
unmasked sum either way.

Dropouts (``secagg.dropouts``): a client whose ``secret_summands`` is None answers stage 2 with an
error, as a vanished node does; Flower's workflow goes on without it while every participant keeps
``threshold`` live neighbours, rebuilds its pairwise masks from the survivors' shares and unmasks
the survivors' sum, which the driver aggregates as in process. A ClientApp that fails for any other
reason ends the round with the client, the stage and the reason.

Quantization: flwr's ``quantize`` rounds stochastically with numpy's global generator; the ClientApp
seeds it per run, round and client just before the mod quantizes and restores it after
(``benchmark.engines.flower_client``). The seed differs from the in-process engine's, so the two
sums differ by quantization noise (each entry by at most ``2 * clipping_range / quantization_range``
per client), never by masks, which cancel exactly.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow

from benchmark.contract import ClientUpdate, ServerRole, WirePayload
from benchmark.engines.flower_client import DROPOUT_REASON
from benchmark.engines.records import HARNESS, harness_record, read_harness
from benchmark.federation.protocol import Upload
from benchmark.federation.transcript import Channel

NODE_LISTS = (Key.DESTINATION_LIST, Key.SOURCE_LIST, Key.ACTIVE_NODE_ID_LIST, Key.DEAD_NODE_ID_LIST, Key.NODE_ID_LIST)
FITRES_META, FITRES_COUNT = "fitres.metrics", "fitres.num_examples"


def workflow(settings: Mapping[str, float], participants: int, timeout: float) -> SecAggPlusWorkflow:
    """Flower's workflow with the defense's settings for a round of ``participants``. Flower takes an
    integer ``num_shares`` only above 2 and an integer threshold only below it: every participant
    and a threshold equal to the shares are therefore passed as the fraction 1.0, which Flower reads
    as the same numbers."""
    shares, threshold = int(settings["num_shares"]), int(settings["threshold"])
    num_shares: int | float = 1.0 if shares >= participants else shares
    recon: int | float = 1.0 if isinstance(num_shares, int) and threshold >= shares else threshold
    return SecAggPlusWorkflow(num_shares, recon, max_weight=float(settings["max_weight"]),
                              clipping_range=float(settings["clipping_range"]),
                              quantization_range=int(settings["quantization_range"]),
                              modulus_range=int(settings["modulus_range"]), timeout=timeout)


def stage_payload(sender: str, record: ConfigRecord, client_of: Mapping[int, int]) -> WirePayload:
    """A SecAgg+ stage record as a ``WirePayload``: bytes (keys, encrypted shares, unmask shares) as
    ciphertext, the rest as metadata, node ids as the client ids they host."""
    cipher: dict[str, bytes | list[bytes]] = {}
    meta: dict[str, Any] = {}
    for key, value in record.items():
        if key in NODE_LISTS:
            meta[key] = [client_of[int(n)] for n in value]
        elif isinstance(value, bytes):
            cipher[key] = value
        elif isinstance(value, list) and value and all(isinstance(v, bytes) for v in value):
            cipher[str(client_of[int(key)]) if key.isdigit() else key] = list(value)  # share_keys: node -> keys
        else:
            meta[key] = value
    return WirePayload(sender, cipher=cipher, meta=meta)


class SumStrategy(Strategy):
    """The legacy strategy the workflow asks: the round's participants (no instructions: the
    ClientApp's update rides in the harness record) and, at the end, the unmasked weighted mean."""

    def __init__(self, proxies: Sequence[GridClientProxy]) -> None:
        self.proxies = list(proxies)
        self.mean: list[Any] | None = None
        self.unmasked_at: float | None = None

    def initialize_parameters(self, client_manager: Any) -> None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        return [(proxy, FitIns(Parameters([], ""), {})) for proxy in self.proxies]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
        self.unmasked_at = time.perf_counter()
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)  # every result holds the same mean
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


class RecordingGrid:
    """The workflow's Grid: each stage's messages and replies go through the ``FlowerLink``'s Grid and
    are recorded in the server's transcript; stage 2's requests gain the harness record (the client's
    update and the run's spec, never counted), its replies become the round's uploads."""

    def __init__(self, link: Any, channel: Channel, rnd: int, updates: Mapping[int, ClientUpdate]) -> None:
        self.link, self.channel, self.rnd, self.updates = link, channel, rnd, updates  # updates by node id
        self.client_of = {node: u.client.client_id for node, u in updates.items()}
        self.uploads: dict[int, Upload] = {}
        self.errors: list[str] = []  # failures
        self.dropped: list[int] = []  # simulated dropouts (the client role sent no masked vector)
        self.waited_s = 0.0

    def send_and_receive(self, messages: Sequence[Message], timeout: float | None = None) -> list[Message]:
        t0 = time.perf_counter()
        stage = ""
        for msg in messages:
            node = msg.metadata.dst_node_id
            record = msg.content.config_records[RECORD_KEY_CONFIGS]
            stage = str(record[Key.STAGE])
            sent = stage_payload("server", record, self.client_of)
            self.channel.down(sent, self.rnd, [self.client_of[node]], "negotiation")
            if stage == Stage.COLLECT_MASKED_VECTORS:
                msg.content[HARNESS] = harness_record({"spec": self.link.spec, "update": self.updates[node],
                                                       "participants": sorted(self.client_of.values())})
            self.link.count(sent, msg)
        replies = self.link.exchange(list(messages))
        for reply in replies:
            self._receive(reply, stage)
        self.waited_s += time.perf_counter() - t0
        return replies

    def _receive(self, reply: Message, stage: str) -> None:
        cid = self.client_of[reply.metadata.src_node_id]
        if reply.has_error():
            if reply.error.reason == DROPOUT_REASON:
                self.dropped.append(cid)
            else:
                self.errors.append(f"client {cid} in stage {stage}: {reply.error.reason}")
            return
        record = reply.content.config_records[RECORD_KEY_CONFIGS]
        sender = f"client:{cid}"
        if stage != Stage.COLLECT_MASKED_VECTORS:
            payload = stage_payload(sender, record, self.client_of)
            payload.meta["stage"] = stage  # the reply's stage is that of the request it answers (reply_to)
            self.channel.up(payload, self.rnd, cid, "negotiation")
            self.link.count(payload, reply)
            return
        meta = {**json.loads(str(reply.content.config_records[FITRES_META]["meta"])),
                "num_examples": int(reply.content.metric_records[FITRES_COUNT]["num_examples"])}
        payload = WirePayload(sender, cipher={"masked": list(record[Key.MASKED_PARAMETERS])}, meta=meta)
        received = self.channel.up(payload, self.rnd, cid, "upload")
        self.link.count(payload, reply)
        timings = read_harness(reply.content)["timings"]
        self.uploads[cid] = Upload(received, timings.get("enc_s"), received.nbytes(), received.cipher_bytes(),
                                   timings["protect_s"])


class FlowerSecAggPlus:
    """The ``flower`` engine's ``SecureSum``: one round of Flower's SecAgg+ through ``RecordingGrid``;
    the survivors' updates and uploads, or an error saying why there is no sum."""

    def __init__(self, link: Any, settings: Mapping[str, float]) -> None:
        self.link, self.settings = link, dict(settings)
        n_clients = link.spec.scenario.n_clients
        if link.partitions < n_clients:
            raise RuntimeError(f"flower SecAgg+: {n_clients} clients on {link.partitions} "
                               f"nodes; SecAgg+ knows a client by its Flower node, so give every client its own "
                               f"node (num-partitions = {n_clients})")

    def __call__(self, server: ServerRole, updates: Sequence[ClientUpdate], rnd: int,
                 channel: Channel) -> tuple[list[tuple[ClientUpdate, Upload]], WirePayload, float]:
        nodes = {self.link.node_of(u.client.client_id): u for u in updates}
        grid = RecordingGrid(self.link, channel, rnd, nodes)
        strategy = SumStrategy([GridClientProxy(node, self.link.grid, 0) for node in nodes])
        context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=strategy)
        context.state.config_records["config"] = ConfigRecord({"current_round": rnd})
        context.state.array_records["parameters"] = ArrayRecord()
        t0, py_random = time.perf_counter(), random.getstate()
        try:  # the workflow shuffles its ring with Python's global generator: seeded per run and round here
            random.seed(f"shebench-secagg/{self.link.spec.seed}/{rnd}")  # and restored after, for the harness
            workflow(self.settings, len(updates), self.link.timeout)(grid, context)
        finally:
            random.setstate(py_random)
        workflow_s = time.perf_counter() - t0 - grid.waited_s  # the server's own work between the stages
        if grid.errors:  # a ClientApp failed: a fault, not a dropout the scenario asked for
            raise RuntimeError(f"flower SecAgg+ round {rnd}: {'; '.join(grid.errors)}")
        if strategy.mean is None:
            raise RuntimeError(f"flower SecAgg+ round {rnd}: the workflow ended without a sum (clients "
                               f"{sorted(grid.dropped)} dropped out; too few left, see Flower's log)")
        pairs = [(u, grid.uploads[u.client.client_id]) for u in updates if u.client.client_id in grid.uploads]
        message = server.aggregate_sum(strategy.mean, [sent.payload for _, sent in pairs])
        return pairs, message, workflow_s + message.timings.get("agg_s", 0.0)
