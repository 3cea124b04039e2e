"""The ``flower`` engine: the federation's round loop as a Flower ServerApp, its clients as ClientApps.

The ServerApp runs the same ``RoundDriver`` as every engine (``benchmark.federation.driver``); its
``ClientEndpoint`` is ``FlowerClients``, which turns each call into a Flower message to the node that
hosts the client. The ServerApp process holds the defense's server role only; every client-role call
(setup, propose, accept, answer, protect, finalize) and all local training run in a ``ClientNode`` in the
ClientApp (``benchmark.engines.flower_client``). WirePayloads travel as Flower records
(``benchmark.engines.records``) and are recorded in the server's transcript by the same ``Channel`` as
in-process, so the probe and the attacks run server-side from the transcript alone.

One Flower node per client on the simulation runtime (node ``partition-id`` = client id; a node with
``num-partitions`` < clients hosts every client ``c`` with ``c % num-partitions == partition-id``).
Clients are sampled by ``benchmark.federation.sampling.sample_round`` from the scenario's seed, as
in-process.

A defense that declares Flower's SecAgg+ (``SecretSum.secagg_plus``: ``secagg``, ``dp+secagg``) has
its rounds run by Flower's own ``SecAggPlusWorkflow`` and ``secaggplus_mod`` instead of its own
protocol messages (``benchmark.engines.flower_secagg``, which says why and what the transcript holds).

What is not a protocol message travels in a ``harness`` record that never enters the transcript or
any byte count: the endpoint's harness data (``benchmark.federation.endpoint``): the private
arguments of a client-role call (the client's update), its start and head for local training, and
what the referee scores (raw updates for ``agg_rel_err``, the texts a client trained on, finalized
factors), plus the run's public configuration with a fresh copy of the client role (``NodeSpec``). So the referee lives in the
ServerApp's process, as it lives in the one process of ``inproc``: the threat model holds because an
attack gets only views built from the transcript, not because the server process is blind. The nodes
keep no per-client protocol state of their own: the defense's client role object is their only state, shared
by every client they host (the single-key threat model of the in-process engine). A node process does keep
copies of the harness values it sent (its update, its finalized factors), so the ServerApp hands them back
by key instead of relaying tens of MB per call (``benchmark.engines.kept``).
"""

from __future__ import annotations

import contextvars
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from torch import Tensor

from benchmark.config import ScenarioConfig
from benchmark.contract import ClientInfo, ClientUpdate, Defense, FederationInfo, WirePayload
from benchmark.engines.flower_client import NodeSpec, make_client_app
from benchmark.engines.flower_secagg import FlowerSecAggPlus
from benchmark.engines.kept import MISSING, ServerEcho, limit_for
from benchmark.engines.records import content, message_sizes, payload_records, read_harness, read_payload
from benchmark.federation.assets import build_assets
from benchmark.federation.data import Example
from benchmark.federation.driver import RoundDriver, SimulationResult
from benchmark.federation.endpoint import Factors
from benchmark.federation.referee import ModelReferee
from benchmark.federation.sampling import Schedule
from benchmark.federation.train import LocalResult

NODES_TIMEOUT_S = 600.0  # nodes to register with the ServerApp; a reply to arrive
PULL_WAIT_S = (0.005, 0.1)  # the first and the longest wait between pulls for replies


# ---- the server side (ServerApp) ------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One client-role call as a message: the op, the client it concerns, the WirePayload it carries
    (counted in ``transport_*`` when ``metered``) and the harness data beside it."""

    op: str
    cid: int
    payload: WirePayload | None = None
    harness: dict[str, Any] | None = None
    metered: bool = True


class FlowerLink:
    """The ServerApp's end: which node hosts each client, one message out and its reply back, and the
    bytes Flower moved for messages that carry a WirePayload (against the payloads' own count).

    It keeps the node of each ``partition-id`` (node ``p`` of ``num-partitions`` P hosts every client
    ``c`` with ``c % P == p``), never a table per client: a federation of many clients with few
    sampled costs the link one entry per node, and the mapping is built in time linear in the nodes."""

    def __init__(self, grid: Grid, spec: NodeSpec, timeout: float = NODES_TIMEOUT_S) -> None:
        self.grid, self.spec, self.timeout = grid, spec, timeout
        self.wire_bytes = self.message_bytes = self.messages = 0
        self.nodes: dict[int, int] = {}  # partition-id -> Flower node id
        self.partitions = 0  # num-partitions, as the nodes report it
        self.echo = ServerEcho(limit_for(spec.scenario.clients_per_round))
        self._hello(spec.scenario.n_clients, time.monotonic() + timeout)

    def _hello(self, n_clients: int, deadline: float) -> None:
        """Ask every node that registers which partition it is, until every client has one."""
        seen: set[int] = set()
        while self.missing(n_clients):
            if time.monotonic() > deadline:
                raise RuntimeError(f"flower: {self.missing(n_clients)} of the nodes that host the {n_clients} clients "
                                   f"have not registered after {self.timeout:.0f}s")
            fresh = [n for n in self.grid.get_node_ids() if n not in seen]
            if not fresh:
                time.sleep(0.05)
                continue
            msgs = [Message(content(), dst_node_id=n, message_type="query.hello") for n in fresh]
            for reply in self.exchange(msgs):
                seen.add(reply.metadata.src_node_id)
                hello = read_harness(self._checked(reply, "hello", -1).content)
                if self.partitions and hello["of"] != self.partitions:
                    raise RuntimeError(f"flower: nodes disagree on num-partitions ({self.partitions} and {hello['of']}); "
                                       "start every SuperNode with the same num-partitions")
                self.partitions = int(hello["of"])
                self.nodes[int(hello["partition"])] = reply.metadata.src_node_id

    def missing(self, n_clients: int) -> int:
        """How many of the nodes that host a client have not answered (unknown before any answer)."""
        if not self.partitions:
            return max(1, n_clients)
        needed = min(self.partitions, n_clients)
        return needed - sum(1 for p in self.nodes if p < needed)

    def node_of(self, cid: int) -> int:
        return self.nodes[cid % self.partitions]

    def exchange(self, messages: list[Message]) -> list[Message]:
        """Send ``messages`` and wait for their replies (those that came within the timeout)."""
        return list(self.round_trip(messages)[1].values())

    def round_trip(self, messages: list[Message]) -> tuple[list[str | None], dict[str, Message]]:
        """Push ``messages`` together and pull until every one has its reply or the timeout passed:
        the message ids (in the messages' order) and the replies that came, by the id they answer.

        ``Grid.send_and_receive`` does the same but waits 3 s between pulls on a SuperLink (0.1 s on
        the simulation runtime): a deployment's sequential messages then spent most of their wall
        waiting. Here the wait starts at 5 ms and doubles up to 100 ms."""
        ids = list(self.grid.push_messages(messages))  # None: Flower could not push that message
        pending = {i for i in ids if i is not None}
        if len(pending) < sum(1 for i in ids if i is not None):  # a Grid may name a message by its contents
            raise RuntimeError("flower: two messages sent together are equal; each must name its client")
        replies: dict[str, Message] = {}
        deadline, wait = time.monotonic() + self.timeout, PULL_WAIT_S[0]
        while pending and time.monotonic() < deadline:
            got = list(self.grid.pull_messages(pending))
            replies.update((m.metadata.reply_to_message_id, m) for m in got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if pending:
                time.sleep(wait)
                wait = min(2 * wait, PULL_WAIT_S[1])
        return ids, replies

    def _checked(self, reply: Message, op: str, cid: int) -> Message:
        if reply.has_error():
            raise RuntimeError(f"flower: client {cid} failed in {op}: {reply.error.reason}")
        return reply

    def call(self, op: str, cid: int, payload: WirePayload | None = None, harness: dict[str, Any] | None = None,
             metered: bool = True) -> tuple[WirePayload | None, dict[str, Any]]:
        """Send ``op`` to client ``cid``'s node and wait for its reply; count the payload-carrying ones."""
        return self.call_many([Call(op, cid, payload, harness, metered)])[0]

    def call_many(self, calls: Sequence[Call]) -> list[tuple[WirePayload | None, dict[str, Any]]]:
        """Send every call's message at once and wait for all their replies: each node answers its
        own in turn, the nodes side by side. The replies come back in the calls' order, whichever
        node answered first, and so are counted (sums of sizes, which no order changes). A value the
        node kept of its own earlier reply goes as its key (``benchmark.engines.kept``); a call whose
        node no longer holds one is sent again with the values inline."""
        out = self._call_many(calls, first=True)
        again = [i for i, (_, h) in enumerate(out) if MISSING in h]
        if again:
            for i, reply in zip(again, self._call_many([calls[i] for i in again], first=False), strict=True):
                out[i] = reply
        return out

    def _call_many(self, calls: Sequence[Call], first: bool) -> list[tuple[WirePayload | None, dict[str, Any]]]:
        """One try of ``call_many``: the first compresses harness values the nodes kept and counts the
        payloads it sends; the second (only calls answered ``missing``) sends every value inline and
        counts no request again (the payload was counted once, as in-process)."""
        msgs, built = [], {}  # built: a payload's records, shared by the messages that carry it
        for c in calls:
            node = self.node_of(c.cid)
            harness = self.echo.compress(c.harness, node) if first and c.harness else (c.harness or {})
            if c.payload is not None and id(c.payload) not in built:
                built[id(c.payload)] = payload_records(c.payload)
            records = built[id(c.payload)] if c.payload is not None else None
            msgs.append(Message(content(c.payload, {**harness, "spec": self.spec}, records), dst_node_id=node,
                                message_type=f"query.{c.op}"))
        metered = [(c.payload, m) for c, m in zip(calls, msgs, strict=True) if c.payload is not None and c.metered and first]
        self.count_many(metered)
        ids, replies = self.round_trip(msgs)
        out = []
        for c, message_id in zip(calls, ids, strict=True):
            if message_id not in replies:
                raise RuntimeError(f"flower: no reply from client {c.cid} to {c.op} within {self.timeout:.0f}s")
            reply = self._checked(replies[message_id], c.op, c.cid)
            harness = read_harness(reply.content)
            if MISSING in harness:  # nothing ran: the caller sends it again
                out.append((None, harness))
                continue
            wire = read_payload(reply.content)
            if wire is not None and c.metered:
                self.count(wire, reply)
            self.echo.register(harness, reply.metadata.src_node_id)
            out.append((wire, harness))
        return out

    def count(self, payload: WirePayload, msg: Message) -> None:
        self.count_many([(payload, msg)])

    def count_many(self, sent: Sequence[tuple[WirePayload, Message]]) -> None:
        """Count messages and the payloads they carry (sized together: shared records once)."""
        for (payload, _), size in zip(sent, message_sizes([m for _, m in sent]), strict=True):
            self.messages += 1
            self.wire_bytes += payload.nbytes()
            self.message_bytes += size

    def summary(self) -> dict[str, float]:
        over = self.message_bytes - self.wire_bytes
        return {"transport_bytes": float(self.message_bytes), "framing_overhead_bytes": float(over),
                "framing_overhead_frac": over / self.wire_bytes if self.wire_bytes else None,
                "transport_messages": float(self.messages)}


class FlowerClients:
    """The driver's ``ClientEndpoint`` on Flower: each call is a message to the node that hosts the
    client it concerns (``benchmark.engines.flower_client``), where a ``ClientNode`` answers it; a
    phase's calls (``*_many``, and ``accept`` to every proposer) go out together.
    WirePayloads ride as wire records (counted in ``transport_*``); harness data (updates, starts,
    heads, finalized factors, timings) in the harness record, never counted."""

    def __init__(self, link: FlowerLink) -> None:
        self.link = link
        self._costs: dict[str, float] = {}
        self._proposers: list[int] = []

    def setup(self, fed: FederationInfo) -> WirePayload | None:
        hello, h = self.link.call("setup", fed.clients[0].client_id, harness={"fed": fed})
        self._costs = h["costs"]
        return hello

    def setup_costs(self) -> dict[str, float]:
        return dict(self._costs)

    def init(self, client: ClientInfo, message: WirePayload | None) -> Factors:
        return self.init_many([(client, message)])[0]

    def init_many(self, items: Sequence[tuple[ClientInfo, WirePayload | None]]) -> list[Factors]:
        calls = [Call("init", c.client_id, m, {"client": c}, metered=m is not None) for c, m in items]
        return [h["factors"] for _, h in self.link.call_many(calls)]

    def train(self, client: ClientInfo, rnd: int, start: Factors, head: dict[str, Tensor]) -> LocalResult:
        return self.train_many([(client, start)], rnd, head)[0]

    def train_many(self, jobs: Sequence[tuple[ClientInfo, Factors]], rnd: int, head: dict[str, Tensor]) -> list[LocalResult]:
        calls = [Call("train", c.client_id, harness={"client": c, "rnd": rnd, "start": start, "head": head}, metered=False)
                 for c, start in jobs]
        return [h["result"] for _, h in self.link.call_many(calls)]

    def propose(self, update: ClientUpdate) -> WirePayload | None:
        return self.propose_many([update])[0]

    def propose_many(self, updates: Sequence[ClientUpdate]) -> list[WirePayload | None]:
        self._proposers += [u.client.client_id for u in updates]
        return [wire for wire, _ in self.link.call_many([Call("propose", u.client.client_id, harness={"update": u})
                                                         for u in updates])]

    def accept(self, reply: WirePayload) -> None:
        """The reply goes to every client that proposed this round, together (each message names its
        client: two equal messages to one node would be one message to Flower)."""
        self.link.call_many([Call("accept", cid, reply, {"cid": cid}) for cid in self._proposers])
        self._proposers = []

    def answer(self, message: WirePayload, client: ClientInfo) -> WirePayload | None:
        return self.link.call("answer", client.client_id, message, {"client": client})[0]

    def protect(self, update: ClientUpdate) -> WirePayload | None:
        return self.protect_many([update])[0]

    def protect_many(self, updates: Sequence[ClientUpdate]) -> list[WirePayload | None]:
        out: list[WirePayload | None] = []
        for wire, h in self.link.call_many([Call("protect", u.client.client_id, harness={"update": u}) for u in updates]):
            if wire is not None:  # None: the client dropped out of the round
                wire.timings = dict(h["timings"])  # the client's own measurements, never traffic
            out.append(wire)
        return out

    def finalize(self, message: WirePayload, client: ClientInfo, *, harness: bool = False) -> tuple[Factors, float]:
        h = self.link.call("finalize", client.client_id, message, {"client": client}, metered=not harness)[1]
        return h["factors"], h["dec_s"]

    def finalize_many(self, message: WirePayload, clients: Sequence[ClientInfo]) -> list[tuple[Factors, float]]:
        """Each client's node decodes its own copy of ``message`` (so each decryption is measured)."""
        replies = self.link.call_many([Call("finalize", c.client_id, message, {"client": c}) for c in clients])
        return [(h["factors"], h["dec_s"]) for _, h in replies]

    def probe_update(self, client: ClientInfo, rnd: int, start: Factors, batch: list[Example]) -> ClientUpdate:
        harness = {"client": client, "rnd": rnd, "start": start, "batch": batch}
        return self.link.call("probe_update", client.client_id, harness=harness, metered=False)[1]["update"]

    def privacy_params(self) -> dict[str, Any]:
        return self.link.call("privacy", 0, metered=False)[1]["privacy"]


def make_server_app(body: Callable[[Grid], Any], out: dict[str, Any]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        out["result"] = body(grid)

    return app


def backend_config(threads: int) -> dict[str, Any]:
    """One Ray actor (every client's ClientApp runs in it, one message at a time, as in-process) with
    the thread count of this process, so local training computes the same floats. Flower hands the
    actor this process's ``sys.path`` (it imports this checkout of the suite); Ray stays on loopback
    (``benchmark.engines`` sets its environment)."""
    return {"client_resources": {"num_cpus": threads, "num_gpus": 0},
            "init_args": {"num_cpus": threads, "num_gpus": 0, "include_dashboard": False}}


# Set by the deployment's ServerApp (``benchmark.engines.flower_deploy``) around a whole ``shebench run``:
# the Grid of a real SuperLink, which ``simulate`` then uses instead of starting a simulation runtime.
DEPLOYMENT_GRID: contextvars.ContextVar[Grid | None] = contextvars.ContextVar("shebench_flower_grid", default=None)


def build_driver(grid: Grid, scenario: ScenarioConfig, defense: Defense, seed: int, device: str, threads: int,
                 progress: Callable[[str], None] | None = None) -> tuple[RoundDriver, FlowerLink]:
    """The driver of one federation whose clients are the Grid's nodes, and its link (tests read the
    driver's channel and the link's byte counts). A defense that declares Flower's SecAgg+
    (``SecretSum.secagg_plus``) has its rounds run by Flower's workflow (``flower_secagg``). ``threads``:
    the caller's torch thread count (the nodes train with it; the ServerApp thread may not share it)."""
    # the role the driver never calls: a fresh copy of it travels to the nodes, the server role stays here
    link = FlowerLink(grid, NodeSpec(uuid.uuid4().hex, scenario, defense.client, seed, device, threads))
    assets = build_assets(scenario, seed, device)  # the referee's: evaluation, public models, truth
    secret = defense.secret_sum(assets.fed.clients_per_round)
    secure = FlowerSecAggPlus(link, secret.secagg_plus) if secret is not None and secret.secagg_plus else None
    driver = RoundDriver(assets.fed, defense.server, FlowerClients(link), ModelReferee(assets, secret),
                         Schedule.sampled(scenario, seed), progress, secure)
    return driver, link


def on_simulation_runtime(body: Callable[[Grid], Any], n_nodes: int, threads: int) -> Any:
    """``body``'s result, run in a ServerApp on Flower's simulation runtime with ``n_nodes`` nodes
    (the ServerApp in a thread of this process, the ClientApps in a Ray actor)."""
    from flwr.simulation import run_simulation

    out: dict[str, Any] = {}
    run_simulation(make_server_app(body, out), make_client_app(in_memory=True), num_supernodes=n_nodes,
                   backend_config=backend_config(threads))
    if "result" not in out:
        raise RuntimeError("flower: the ServerApp ended without a result (see Flower's log above)")
    return out["result"]


def simulate(scenario: ScenarioConfig, defense: Defense, seed: int, device: str = "cpu",
             progress: Callable[[str], None] | None = None) -> SimulationResult:
    """One federation on Flower: on the SuperLink of a deployment when this runs inside its ServerApp,
    else on the simulation runtime (one node per client)."""
    threads = max(1, torch.get_num_threads())

    def body(grid: Grid, runtime: str) -> SimulationResult:
        driver, link = build_driver(grid, scenario, defense, seed, device, threads, progress)
        result = driver.run()
        result.metrics.update(link.summary(), engine_runtime=runtime)
        return result

    grid = DEPLOYMENT_GRID.get()
    if grid is not None:
        return body(grid, "deployment")
    return on_simulation_runtime(lambda g: body(g, "simulation"), scenario.n_clients, threads)
