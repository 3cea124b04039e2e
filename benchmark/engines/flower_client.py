"""The client side of the ``flower`` engine: one ClientApp for the simulation and the deployment runtime.

Every message names its op (``query.<op>``) and carries the run's public configuration (``NodeSpec``)
in its harness record, so a ClientApp process needs nothing else to rebuild the client side: the
defense's client role, and (only for ops that train) the model, data and shards. The client role is
the node's only state between messages:

- on the simulation runtime every node runs in one long-lived Ray actor, which keeps one role object
  for all of them in memory (the clients' shared state, as in the in-process engine);
- on a deployment the role is kept in the clients' shared state folder (``--node-config
  "state-dir='...'"``): stored after each op that changed it, and loaded before an op when another
  process stored it since, under a per-run lock that ops seen to leave the role unchanged share, so
  the nodes compute side by side (``FolderRoles``). That folder holds the clients' shared CKKS
  secret key: it must be readable by client machines only (one machine: a local folder; several: a
  folder they share, never the SuperLink's).

How long a deployment's ClientApp process lives is the SuperNode's choice. With Flower's default
``--isolation subprocess`` it starts a fresh process per message, which pays the imports, the model
load and the role's unpickling every time; with ``--isolation process`` and our long-running
executor beside it (``benchmark.engines.flower_worker``) one process answers every message of the
node, and keeps the run's client side warm in ``FolderRoles``: the model, data and LoRA host built
once per run, the role reloaded only when another node changed it. Nothing of this reaches the
server: the replies are the same messages either way.

This module imports no model code until an op trains, so short-lived ClientApp processes start
quickly.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from flwr.app import Context, Error, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from benchmark.config import ScenarioConfig
from benchmark.contract import ClientRole, WirePayload, json_default
from benchmark.engines.kept import KEPT, MISSING, NodeKeeps, limit_for
from benchmark.engines.records import HARNESS, content, harness_record, read_harness, read_payload

if TYPE_CHECKING:
    from benchmark.federation.assets import Assets
    from benchmark.federation.node import ClientNode


@dataclass(frozen=True)
class NodeSpec:
    """The run's public configuration: what a ClientApp process rebuilds the client side from."""

    token: str  # one simulation; a process rebuilds its client side when it changes
    scenario: ScenarioConfig
    role: ClientRole  # the defense's client role as built, before setup: each process unpickles its own
    seed: int
    device: str
    threads: int


@dataclass
class ClientProcess:
    """What a ClientApp process holds for one run: a ``ClientNode`` around the defense's client role;
    the node builds its model, data and shards on first need (only ops that train need them). The
    process never builds a server role or a round driver."""

    spec: NodeSpec
    role: ClientRole
    node: ClientNode = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from benchmark.federation.assets import build_assets  # model code: only once an op trains
        from benchmark.federation.node import ClientNode

        spec = self.spec

        def assets() -> Assets:
            torch.set_num_threads(spec.threads)
            return build_assets(spec.scenario, spec.seed, spec.device)

        self.node = ClientNode(self.role, assets)

    def adopt(self, role: ClientRole) -> None:
        """Continue with ``role`` (another process's latest copy), keeping the model and data."""
        self.role = self.node.role = role


def fresh_role(spec: NodeSpec) -> ClientRole:
    """The run's client role, never set up (the spec was unpickled from this message: a copy of its
    own). Only the client role travels: a ClientApp never builds the server role."""
    return spec.role


# ---- where the role lives between messages ----------------------------------------------------

T = TypeVar("T")


class MemoryRoles:
    """One process (the simulation's Ray actor) hosting every node: the role stays in memory. The
    client side is built at the first message, before the role's setup, in the order the in-process
    engine uses (its global RNG state then matches). Only the latest run's is kept."""

    def __init__(self) -> None:
        self.current: ClientProcess | None = None

    def run(self, spec: NodeSpec, op: str, fn: Callable[[ClientProcess], T]) -> T:
        """``fn`` (op ``op``'s computation) on the run's client side."""
        if self.current is None or self.current.spec.token != spec.token:
            self.current = ClientProcess(spec, fresh_role(spec))
            self.current.node.assets  # noqa: B018 (built now, before the role's setup, as in-process)
        return fn(self.current)


class FolderRoles:
    """The clients' shared state folder: the role pickled per run (a CKKS context pickles as its own
    serialization, secret key included) behind a revision id that each store draws afresh, and a lock
    file per run that every op holds while it runs.

    The store also keeps the latest run's client side in this process (the role, and the model, data
    and LoRA host once an op trained) with the exact pickle of the role revision it holds: an op
    reloads the role only when the folder holds another revision than the one this process stored or
    read last, i.e. another process (another node, or this node's previous per-message process)
    changed it since. In a process that lives for one message that is every op; in a long-running one
    (``benchmark.engines.flower_worker``) only the first op after another node's. An op that fails
    stores nothing and drops what this process kept: the next op starts from the folder's last good
    role.

    Why the lock adapts: with an exclusive lock over every op and the role stored after each, a
    loopback deployment trained its two nodes one at a time (``train``: seconds per client), and every
    op paid a pickle and a write of the role (SHE-LoRA's holds a CKKS context and its keys), the other
    node an unpickle. The rule, per run and op kind (the ``NODE_OPS`` key, or ``contribution``), learned
    in this process:

    - an op leaves the role unchanged when its pickle afterwards equals the held one: nothing is
      stored (no write, the revision stays);
    - an op kind not seen yet runs under the exclusive lock; once it ran and left the role unchanged,
      its later calls take a shared lock, beside the other node's shared ops;
    - a shared op that does change the role trades its lock for the exclusive one: if the folder
      still holds the revision the op started from, the new role is stored; else another process
      stored meanwhile and the op is redone, under the exclusive lock, on that role (ops are
      deterministic given the role: they seed their own generators), its reply replacing the first.
      That op kind runs exclusive from then on.

    Shared ops change nothing and exclusive ones see every store before theirs, so the folder always
    holds the role of some serial order of the ops: no update is lost."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.current: ClientProcess | None = None
        self.revision = b""  # the folder's revision that ``current.role`` is a copy of
        self.blob = b""  # ``current.role`` pickled by this process at that revision
        self.changes: dict[tuple[str, str], bool] = {}  # (run token, op) -> whether it changed the role
        self.notes: deque[str] = deque(maxlen=64)  # per op: its lock and what it stored (a worker logs them)

    def run(self, spec: NodeSpec, op: str, fn: Callable[[ClientProcess], T]) -> T:
        """``fn`` (op ``op``'s computation, re-runnable) on the run's client side, under the run's lock;
        the role stored after it only when it changed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path, kind = self.folder / f"{spec.token}.role", (spec.token, op)
        shared = self.changes.get(kind) is False
        proc, self.current = self.current, None  # kept again only once the op succeeded
        with open(self.folder / f"{spec.token}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            proc = self.sync(spec, path, proc)
            start = self.revision
            reply, blob = fn(proc), pickle_role(proc.role)
            changed = blob != self.blob
            note = f"{op}: {'shared' if shared else 'exclusive'}"
            if changed and shared:  # a surprise: exclusive from now on; store, or redo if another stored
                self.changes[kind] = True
                fcntl.flock(lock, fcntl.LOCK_UN)
                fcntl.flock(lock, fcntl.LOCK_EX)
                note += ", changed the role: promoted to exclusive"
                if read_revision(path) != start:
                    proc = self.sync(spec, path, proc)
                    reply, blob = fn(proc), pickle_role(proc.role)
                    changed = blob != self.blob
                    note += ", redone on another process's role"
            self.changes[kind] = self.changes.get(kind, False) or changed
            if changed:
                self.revision, self.blob = store_blob(path, blob), blob
            self.notes.append(note + (", stored" if changed else ""))
        self.current = proc
        return reply

    def sync(self, spec: NodeSpec, path: Path, proc: ClientProcess | None) -> ClientProcess:
        """The run's client side (``proc``, kept from the last op, or built) at the folder's revision;
        the caller holds the run's lock."""
        stored = read_revision(path)
        if proc is not None and proc.spec.token == spec.token and stored == self.revision:
            return proc
        role = load_role(path) if stored else fresh_role(spec)
        if proc is None or proc.spec.token != spec.token:
            proc = ClientProcess(spec, role)
        else:
            proc.adopt(role)
        # pickled here, not the file's bytes: another process's pickle of the same role may differ
        # (torch pickles a tensor's storage under its memory address), so every op would look a change
        self.revision, self.blob = stored, pickle_role(role)
        return proc


REVISION_BYTES = 16  # a role file opens with its revision id: a reader compares ids, never unpickles to compare


def read_revision(path: Path) -> bytes:
    """The revision id of the role stored at ``path`` (empty when none is)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(REVISION_BYTES)
    except FileNotFoundError:
        return b""


def pickle_role(role: ClientRole) -> bytes:
    return pickle.dumps(role, protocol=pickle.HIGHEST_PROTOCOL)


def load_role(path: Path) -> ClientRole:
    return pickle.loads(path.read_bytes()[REVISION_BYTES:])  # noqa: S301 (the clients' own folder)


def store_blob(path: Path, blob: bytes) -> bytes:
    """Store a pickled role under a fresh revision id (written whole, then renamed into place); returns the id."""
    revision = os.urandom(REVISION_BYTES)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(revision)
        fh.write(blob)
    os.replace(tmp, path)
    return revision


def role_notes() -> str:
    """What this process's state folders did since the last call: each op's lock, and whether it
    stored or was redone (``benchmark.engines.flower_worker`` logs it beside each task)."""
    notes = [note for store in FOLDER_ROLES.values() for note in store.notes]
    for store in FOLDER_ROLES.values():
        store.notes.clear()
    return "; ".join(notes)


# ---- the ops ---------------------------------------------------------------------------------

Reply = tuple[WirePayload | None, dict[str, Any]]


def _setup(node: ClientNode, wire: WirePayload | None, h: dict[str, Any]) -> Reply:
    hello = node.setup(h["fed"])
    return hello, {"costs": node.setup_costs()}


def _init(node: ClientNode, wire: WirePayload | None, h: dict[str, Any]) -> Reply:
    """Round-1 factors: read from the server's ``init`` message, or drawn privately by the client."""
    return None, {"factors": node.init(h["client"], wire)}


def _train(node: ClientNode, wire: WirePayload | None, h: dict[str, Any]) -> Reply:
    return None, {"result": node.train(h["client"], h["rnd"], h["start"], h["head"])}


def _propose(node: ClientNode, wire: WirePayload | None, h: dict[str, Any]) -> Reply:
    return node.propose(h["update"]), {}


def _accept(node: ClientNode, wire: WirePayload | None, h: dict[str, Any]) -> Reply:
    node.accept(wire)
    return None, {}


def _answer(node: ClientNode, wire: WirePayload | None, h: dict[str, Any]) -> Reply:
    return node.answer(wire, h["client"]), {}


def _protect(node: ClientNode, wire: WirePayload | None, h: dict[str, Any]) -> Reply:
    sent = node.protect(h["update"])
    return sent, {"timings": dict(sent.timings)}


def _finalize(node: ClientNode, wire: WirePayload | None, h: dict[str, Any]) -> Reply:
    factors, dec_s = node.finalize(wire, h["client"])
    return None, {"factors": factors, "dec_s": dec_s}


def _probe_update(node: ClientNode, wire: WirePayload | None, h: dict[str, Any]) -> Reply:
    return None, {"update": node.probe_update(h["client"], h["rnd"], h["start"], h["batch"])}


def _privacy(node: ClientNode, wire: WirePayload | None, h: dict[str, Any]) -> Reply:
    return None, {"privacy": node.privacy_params()}


NODE_OPS: dict[str, Callable[[ClientNode, WirePayload | None, dict[str, Any]], Reply]] = {
    "setup": _setup, "propose": _propose, "accept": _accept, "answer": _answer, "protect": _protect, "finalize": _finalize,
    "init": _init, "train": _train, "probe_update": _probe_update, "privacy": _privacy,
}


def _hello(msg: Message, context: Context) -> Message:
    """Which clients this node hosts (its ``partition-id`` out of ``num-partitions``)."""
    cfg = context.node_config
    return Message(content(None, {"partition": int(cfg["partition-id"]), "of": int(cfg["num-partitions"])}),
                   reply_to=msg)


# Flower rebuilds the ClientApp (unpickled anew in the Ray actor) for every message; what must outlive
# a message in a simulation's actor therefore lives here, one per process.
PROCESS_ROLES = MemoryRoles()
# The values this process's replies sent the ServerApp, which it hands back by key (``kept``).
PROCESS_KEEPS = NodeKeeps()


def node_keeps() -> NodeKeeps:
    """This process's kept values (a top-level function, as ``role_store``)."""
    return PROCESS_KEEPS


# A deployment's stores, one per state folder, for as long as this process lives (see ``FolderRoles``).
FOLDER_ROLES: dict[str, FolderRoles] = {}


def role_store(in_memory: bool, context: Context) -> MemoryRoles | FolderRoles:
    """This process's memory (a top-level function: Ray pickles the ClientApp's closures by value,
    which would copy a global they named), or the node's state folder."""
    if in_memory:
        return PROCESS_ROLES
    if "state-dir" not in context.node_config:
        raise RuntimeError("shebench ClientApp: this node has no state folder; start it with "
                           "--node-config \"partition-id=I num-partitions=N state-dir='/clients/only/dir'\"")
    folder = str(context.node_config["state-dir"])
    if folder not in FOLDER_ROLES:
        FOLDER_ROLES[folder] = FolderRoles(folder)
    return FOLDER_ROLES[folder]


# ---- SecAgg+ (``benchmark.engines.flower_secagg``): Flower's mod around the client's contribution -----


def quantization_seed(seed: int, rnd: int, cid: int) -> int:
    return int(np.random.SeedSequence([seed % 2**63, rnd, cid, 0x5EC]).generate_state(1)[0])


DROPOUT_REASON = "shebench: a simulated dropout (the client role sends no masked vector)"


class DroppedOut(Exception):
    """The client role sends nothing in this stage (``secret_summands`` is None): a simulated dropout."""


def numpy_rng_guard(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Around ``secaggplus_mod``: numpy's global generator restored after it (flwr's ``quantize``
    rounds with it, seeded by the handler); a simulated dropout answers with an error, as a vanished
    node does to Flower's workflow; and on the masked vector's reply the client's protect time (the
    whole stage) and encryption time (the mod's weighting, quantization and masking)."""
    state, t0 = np.random.get_state(), time.perf_counter()
    try:
        reply = call_next(msg, context)
    except DroppedOut:
        return Message(Error(0, DROPOUT_REASON), reply_to=msg)
    finally:
        np.random.set_state(state)
    if HARNESS in reply.content:
        protect_s = time.perf_counter() - t0
        own = read_harness(reply.content)
        timings = {"protect_s": protect_s, "enc_s": max(0.0, protect_s - own.get("summands_s", 0.0))}
        reply.content[HARNESS] = harness_record({**own, "timings": timings})
    return reply


def contribution_handler(in_memory: bool) -> Callable[[Message, Context], Message]:
    """Stage 2's ``train`` message, inside ``secaggplus_mod``: the role's summands for the update in
    the harness record, as the ``FitRes`` the mod weights by ``num_examples``, quantizes and masks;
    the upload's metadata rides in the FitRes metrics (sent as Flower sends them)."""

    def handle(msg: Message, context: Context) -> Message:
        harness = read_harness(msg.content)
        spec, update = harness["spec"], harness["update"]
        t0 = time.perf_counter()
        first = [harness]

        def summands_of(proc: ClientProcess) -> tuple[list[np.ndarray], dict[str, Any]] | None:
            h = first.pop() if first else read_harness(msg.content)  # a redo reads its inputs afresh
            return proc.node.role.secret_summands(h["update"], h["participants"])

        summands = role_store(in_memory, context).run(spec, "contribution", summands_of)
        if summands is None:
            raise DroppedOut
        vectors, meta = summands
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(vectors), int(update.n_samples),
                        {"meta": json.dumps(meta, separators=(",", ":"), default=json_default)})
        out = fitres_to_recorddict(fitres, keep_input=False)
        out[HARNESS] = harness_record({"summands_s": time.perf_counter() - t0})
        np.random.seed(quantization_seed(spec.seed, update.round, update.client.client_id) % 2**32)
        return Message(out, reply_to=msg)

    return handle


def make_client_app(in_memory: bool) -> ClientApp:
    """The ClientApp. ``in_memory``: the role stays in this process (simulation); otherwise a node must
    name its clients' shared state folder in its node config (``state-dir``). Flower's SecAgg+
    workflow reaches it as ``train`` messages, through ``secaggplus_mod``."""
    app = ClientApp()
    app.query("hello")(_hello)
    app.train(mods=[numpy_rng_guard, secaggplus_mod])(contribution_handler(in_memory))

    def handler(name: str, op: Callable[..., Reply]) -> Callable[[Message, Context], Message]:
        def handle(msg: Message, context: Context) -> Message:
            harness = read_harness(msg.content)
            spec = harness.pop("spec")
            keeps = node_keeps()
            if missing := keeps.resolve(harness):  # the server sends this call again, values inline
                return Message(content(None, {MISSING: missing}), reply_to=msg)
            first = [(read_payload(msg.content), harness)]

            def reply(proc: ClientProcess) -> Reply:
                if first:
                    wire, h = first.pop()
                else:  # a redo (``FolderRoles``) reads its inputs afresh: the first try may have changed them
                    wire, h = read_payload(msg.content), read_harness(msg.content)
                    h.pop("spec")
                    keeps.resolve(h)
                return op(proc.node, wire, h)

            wire, out = role_store(in_memory, context).run(spec, name, reply)
            out[KEPT] = keeps.keep(out, limit_for(spec.scenario.clients_per_round))
            return Message(content(wire, out), reply_to=msg)

        return handle

    for name, op in NODE_OPS.items():
        app.query(name)(handler(name, op))
    return app


# The ClientApp of a deployment (``benchmark/engines/flower_app``): the role kept in the node's
# ``state-dir``, the run's client side in the process for as long as the SuperNode keeps it.
clientapp = make_client_app(in_memory=False)
