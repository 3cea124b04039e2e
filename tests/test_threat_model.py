"""The attacker is the server and knows only its transcript: checks that can fail, for every defense.

- A fresh server role that only replays the recorded transcript builds the very same attacker view
  as the engine did: the view is a function of messages (plus public facts), never of client state.
- The server role's object graph reaches no client object, no secret key, no client tensor.
- The start the attacker gets is what the server sent or can compute: nothing for factors a client
  drew privately (the leak the old harness had), an estimate where ciphertext stands in the way.
- Where the server sees only sums (secagg), the probe's own secure round is kept apart from the run's
  transcript, and a fresh role that replays the run up to the probe and then that round reads the same
  sum view (``benchmark.federation.sum_view.replayed_sum_view``).
"""

from __future__ import annotations

import gc
import types
from collections.abc import Iterator

import pytest
import torch

from benchmark.contract import ClientRole, ClientUpdate, Defense, LoRAFactors
from benchmark.contract.stacks import build_defense
from benchmark.engines import inproc
from benchmark.federation.lora import LoRAHost
from benchmark.federation.sampling import probe_target
from benchmark.federation.sum_view import replayed_sum_view
from benchmark.federation.transcript import Transcript, attacker_view, read_init, wire_copy
from benchmark.running import resolve_scenario
from defenses import DEFENSES
from she_lora import ckks
from she_lora.lowrank import relative_error

ALL = [*DEFENSES.names(), "dp+she_lora", "dp+secagg"]  # stacks: views through a wrapper too (and a sum's)


class Run:
    """One in-process federation, run, with what these tests read: the driver's transcript and
    referee, the probe's true start, and the defense's two roles."""

    def __init__(self, scenario, defense: Defense) -> None:
        driver = inproc.build_driver(scenario, defense, 0)
        self.scenario, self.defense, self.result = scenario, defense, driver.run()
        self.channel, self.fed, self.clients = driver.channel, driver.fed, driver.fed.clients
        self.public, self.probe_start = driver.referee.public, driver.probe_start


def federation(name: str, **threat) -> Run:
    torch.set_num_threads(1)
    scenario = resolve_scenario("tiny", {"rounds": 2, "threat": threat or {"round": 2, "observation": "sgd"}})
    return Run(scenario, build_defense(name))


@pytest.fixture(scope="module")
def round2() -> dict[str, Run]:
    return {name: federation(name) for name in ALL}


def replay(defense: Defense, transcript: Transcript, fed_info) -> None:
    """Drive a server role with the transcript's messages only, in the order the round driver calls it:
    negotiate, exchanges (the server's own asks; the recorded answers), uploads, exchanges, aggregate."""
    server, msgs = defense.server, [m for m in transcript.messages if m.kind in ("setup", "negotiation", "upload")]
    server.setup(fed_info, [m.payload for m in msgs if m.kind == "setup"])
    msgs = [m for m in msgs if m.kind != "setup"]
    pos = 0

    def take(kind: str, direction: str) -> list:
        nonlocal pos
        out = []
        while pos < len(msgs) and msgs[pos].kind == kind and msgs[pos].direction == direction:
            out.append(msgs[pos].payload)
            pos += 1
        return out

    def exchanges(received: list) -> None:
        nonlocal pos
        asks = server.exchange(received)
        while asks:
            received = []
            for _ in asks:  # each ask down, its answer (if any) right after it
                ask = msgs[pos]
                assert ask.kind == "negotiation" and ask.direction == "down", "the replay is out of step"
                pos += 1
                nxt = msgs[pos] if pos < len(msgs) else None
                if nxt is not None and nxt.kind == "negotiation" and nxt.direction == "up" and nxt.clients == ask.clients:
                    received.append(nxt.payload)
                    pos += 1
            asks = server.exchange(received)

    while pos < len(msgs):
        if server.negotiate(take("negotiation", "up")) is not None:
            take("negotiation", "down")
        exchanges([])
        uploads = take("upload", "up")
        exchanges(uploads)
        server.aggregate(uploads)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, LoRAFactors):
        return same(a.A, b.A) and same(a.B, b.B) and a.scale == b.scale
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dataclass_fields__"):
        return all(same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b


@pytest.mark.parametrize("name", ALL)
def test_view_is_a_function_of_the_transcript_alone(name, round2):
    fed = round2[name]
    engine_view = fed.result.probe.probe_view
    assert engine_view is not None, f"{name}: the probe built no view"
    if fed.result.probe.first.sum_round is not None:
        sum_views_replay(name, fed)
        return
    fresh = build_defense(name)  # never met a client: it knows only the replayed messages
    replay(fresh, fed.channel.transcript, fed.fed)
    client = fed.clients[probe_target(fed.scenario, 0)]
    th = fed.scenario.threat
    view = attacker_view(fresh.server, fed.channel.transcript, client, th.round, "probe", fed.public,
                         lr=th.lr, local_steps=th.steps, batch_size=th.batch_size)
    for field in ("defense", "kind", "modules", "leaked", "cipher_bytes", "prev", "start_known", "lr", "batch_size"):
        assert same(getattr(view, field), getattr(engine_view, field)), f"{name}: {field} differs on replay"


def public_weights(view, fed: Run) -> dict[str, torch.Tensor]:
    """The view's public model as it differs from the base model (the start merged into it)."""
    base = fed.public.build_model({}).state_dict()
    return {k: v.detach().double() - base[k].double() for k, v in view.model.state_dict().items()}


def sum_views_replay(name: str, fed: Run) -> None:
    """A server that sees only sums: every probe case's secure round lies in a transcript of its own,
    none in the run's; a fresh role that replays the run's messages up to the probe and then the cases'
    rounds in order (as the live server met them) reads each case's view from them alone, the very same."""
    run, cases = fed.channel.transcript, list(fed.result.probe.cases.values())
    assert not any(m.kind == "probe" for m in run.messages), f"{name}: a probe round leaked into the run's transcript"
    assert len({c.run_at for c in cases}) == 1 and 0 < cases[0].run_at <= len(run.messages)
    fresh = build_defense(name)  # never met a client
    replay(fresh, Transcript(run.messages[: cases[0].run_at]), fed.fed)
    client = fed.clients[probe_target(fed.scenario, 0)]
    roster = {c.client_id: c for c in fed.fed.clients}
    th = fed.scenario.threat
    for case in cases:
        before = {k: v.clone() for k, v in fresh.server.unmasked_sum().items()}
        view = replayed_sum_view(fresh.server, run, case.sum_round, client, roster, th.round, fed.public,
                                 lr=th.lr, local_steps=th.steps, batch_size=case.view.batch_size)
        assert not same(before, fresh.server.unmasked_sum()), f"{name}: the replayed round unmasked nothing new"
        assert view.summed == len([m for m in case.sum_round.messages if m.kind == "probe"]) > 1
        for field in ("defense", "kind", "modules", "leaked", "cipher_bytes", "prev", "start_known", "start_space",
                      "summed", "note", "lr", "local_steps", "batch_size"):
            assert same(getattr(view, field), getattr(case.view, field)), f"{name}: {field} differs on replay"
        assert same(public_weights(view, fed), public_weights(case.view, fed)), f"{name}: public model differs"


def reachable(root: object) -> Iterator[object]:
    """Every object reachable from ``root`` by references, skipping modules, classes and code."""
    seen, stack = {id(root)}, [root]
    skip = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.CodeType)
    while stack:
        obj = stack.pop()
        yield obj
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, skip):
                seen.add(id(ref))
                stack.append(ref)


def storages(root: object) -> set[int]:
    return {o.untyped_storage().data_ptr() for o in reachable(root) if isinstance(o, torch.Tensor) and o.numel()}


@pytest.mark.parametrize("name", ALL)
def test_server_role_reaches_no_client_object_secret_key_or_client_tensor(name, round2):
    fed = round2[name]
    server, client = fed.defense.server, fed.defense.client
    for obj in reachable(server):
        assert not isinstance(obj, ClientRole | ClientUpdate | LoRAHost), f"{name}: server reaches {type(obj).__name__}"
        assert not (isinstance(obj, ckks.CKKSContext) and obj.has_secret_key), f"{name}: server holds a secret key"
        assert "SecretKey" not in type(obj).__name__, f"{name}: server holds {type(obj).__name__}"
    assert not storages(server) & storages(client), f"{name}: server and client roles share tensor memory"


@pytest.mark.parametrize("name", ALL)
def test_a_privately_drawn_start_never_reaches_the_attacker(name):
    """The old harness handed every attack the client's round-1 factors although nothing was sent. The
    attacker now gets at most what the server role reads off the client's own round-1 upload."""
    fed = federation(name, round=1, observation="grad", init="client")
    view = fed.result.probe.probe_view
    assert not any(m.kind == "init" for m in fed.channel.transcript.messages)
    assert view.start_known != "exact"
    if view.prev is None:
        assert view.start_known == "none"
        return
    if view.summed > 1:  # a secure aggregate: the sum probe states its own start (benchmark.federation.probe)
        return
    client = fed.clients[probe_target(fed.scenario, 0)]
    upload = fed.channel.transcript.find("upload", client.client_id, 1)[1].payload
    assert same(view.prev, fed.defense.server.start_from_upload(wire_copy(upload), client).factors)
    assert all(not torch.equal(view.prev[n].A, f.A) for n, f in fed.probe_start.items())


@pytest.mark.parametrize("name", ALL)
def test_a_server_drawn_start_is_known_exactly(name):
    """Unless the defense's clients replace it with their own (``adopt_start``), as its server role
    then says (``known_init``)."""
    fed = federation(name, round=1, observation="grad", init="server")
    view = fed.result.probe.probe_view
    client = fed.clients[probe_target(fed.scenario, 0)]
    sent = read_init(next(m for m in fed.channel.transcript.messages if m.kind == "init" and client.client_id in m.clients).payload, client)
    if fed.defense.server.known_init(sent, client).known == "none":
        assert view.start_known != "exact"
        assert all(not torch.equal(sent[n].A, f.A) for n, f in fed.probe_start.items())
        return
    assert view.start_known == "exact"
    for n, f in fed.probe_start.items():
        assert torch.equal(view.prev[n].A, f.A) and torch.equal(view.prev[n].B, f.B)


@pytest.mark.parametrize("name", ALL)
def test_a_later_start_is_known_only_as_far_as_the_broadcast_is_readable(name, round2):
    fed = round2[name]
    view, truth = fed.result.probe.probe_view, fed.probe_start
    encrypts = fed.defense.encrypts
    sealed = any(m.payload.cipher for m in fed.channel.transcript.messages if m.kind == "broadcast")
    if encrypts == "all" and sealed:  # the broadcast itself is ciphertext (secure aggregation's is not)
        assert view.prev is None and view.start_known == "none"
        return
    if view.summed > 1:  # a sum's view: prev is the sum's LoRA form; its public model stands at the start
        assert view.start_known == "exact"
        seen = public_weights(view, fed)
        true = public_weights(types.SimpleNamespace(model=fed.public.build_model(
            {n: f.delta() for n, f in truth.items()})), fed)
        moved = [k for k, t in true.items() if t.abs().max() > 0]
        assert moved and max(relative_error(seen[k], true[k]) for k in moved) < 1e-5
        assert all(not seen[k].abs().max() > 0 for k in seen if k not in moved)
        return
    err = max(relative_error(view.prev[n].delta(), truth[n].delta()) for n in truth)
    if encrypts == "selective":  # encrypted parts of the aggregate stand in the way
        assert view.start_known == "estimate" and err > 0.05
    else:  # the server replays the client's finalize from its own broadcast
        assert view.start_known == "exact" and err < 1e-5


@pytest.mark.parametrize("name", ALL)
def test_hidden_values_are_zero_in_the_view(name, round2):
    view = round2[name].result.probe.probe_view
    for m in view.modules.values():
        for factor, mask in ((m.A, m.A_hidden), (m.B, m.B_hidden)):
            if factor is not None and mask is not None:
                assert mask.shape == factor.shape and torch.all(factor[mask] == 0)
