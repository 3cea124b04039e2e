"""The attack probe: the target client computes, the server observes, the harness keeps the truth.

At the threat's round the target's attacked messages are its real upload (``observation=upload``) or
one update per private probe batch from its real start (``sgd``/``grad``), each protected by the
client role and recorded like any upload. Where the server sees only the round's sum (a defense that
declares ``secret_sum``), a probe case is instead the sum of every participant's probe update, each on
a private batch of its own, unmasked by the defense's own protocol (``observe_sums``). The attacker's views are built from the server's
transcript alone (``benchmark.federation.transcript.attacker_view``); the truth (private texts, membership)
never leaves the referee.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from benchmark.config import ScenarioConfig
from benchmark.contract import AttackerView, ClientInfo, ClientUpdate
from benchmark.federation.assets import Assets
from benchmark.federation.endpoint import Factors
from benchmark.federation.protocol import Parties, aggregate, exchange, negotiate, upload
from benchmark.federation.seeding import rng
from benchmark.federation.sum_view import read_sum_view
from benchmark.federation.train import LocalResult, seen_private
from benchmark.federation.transcript import (
    Channel,
    PublicFacts,
    Transcript,
    attacker_view,
)
from benchmark.federation.wire import WireMeter

ProbeKey = tuple[int, int]  # (batch size, index of the private batch)


@dataclass
class ProbeCase:
    """One observed probe message: the attacker's view of it, and the truth only the harness keeps
    (the private texts of the batch, no template, no label, and their input ids)."""

    view: AttackerView | None
    references: list[str]
    reference_ids: list[list[int]] = field(default_factory=list)  # the same, as the input ids the model saw
    # a sum probe's secure round (``observe_sums``): its own transcript (never metered, never in the
    # run's) and how many run messages the server had when it ran, so that the view can be replayed
    sum_round: Transcript | None = None
    run_at: int = 0


@dataclass
class ProbeResult:
    """What the attacks get (views, built from the server's transcript) and what only the harness
    keeps (the truth: the private texts and which candidates were members). One simulation observes
    every probe batch of every batch size the threat names, all from the target's same start."""

    cases: dict[ProbeKey, ProbeCase]
    round_view: AttackerView | None
    candidates_are_members: list[bool]
    template: str = "{text}"
    label_names: tuple[str, ...] = ()

    @property
    def first(self) -> ProbeCase | None:
        return next(iter(self.cases.values()), None)

    @property
    def probe_view(self) -> AttackerView | None:
        """The first probe's view (what ``server_saw`` and ``start_known`` describe)."""
        return self.first.view if self.first else None

    @property
    def references(self) -> list[str]:
        return self.first.references if self.first else []


def probe_keys(scenario: ScenarioConfig) -> list[ProbeKey]:
    """The probe cases one simulation observes: each batch size x each private batch; a real upload
    (``observation=upload``) is a single case."""
    th = scenario.threat
    if th.observation == "upload":
        return [(scenario.train.batch_size, 0)]
    return [(b, j) for b in th.probe_batch_sizes for j in range(scenario.probe.batches)]


def probe_batch(order: Sequence[int], size: int, index: int) -> list[int]:
    """Private batch ``index`` of ``size`` examples: consecutive slices of one seeded permutation of
    the target's shard (disjoint while the shard lasts, wrapping around after)."""
    if not order:
        return []
    start = index * size
    return [order[(start + k) % len(order)] for k in range(min(size, len(order)))]


@dataclass
class ProbeRound:
    """What the probe reads at the end of the threat's round: the parties, the channel the messages
    crossed, the target, its start in that round and every participant's local result."""

    parties: Parties
    channel: Channel
    client: ClientInfo
    rnd: int
    start: Factors
    results: Mapping[int, LocalResult]
    starts: Mapping[int, Factors] = field(default_factory=dict)  # every participant's start (sum probes)


def observe(a: Assets, public: PublicFacts, pr: ProbeRound, progress: Callable[[str], None],
            sum_only: bool = False) -> ProbeResult:
    """Every attacked message of the target in round ``pr.rnd`` and the attacker's view of each; where
    the server sees only the round's sum (``sum_only``) and the threat observes probe batches, the sum
    of every participant's probe update instead (``observe_sums``)."""
    th, train = a.scenario.threat, a.scenario.train
    cases: dict[ProbeKey, ProbeCase] = {}
    transcript = pr.channel.transcript
    if sum_only and th.observation != "upload":
        cases = observe_sums(a, public, pr, progress)
    elif th.observation == "upload":
        references = seen_private(a.loaded.tokenizer, a.spec, pr.results[pr.client.client_id].examples)
        view = attacker_view(pr.parties.server, transcript, pr.client, pr.rnd, "upload", public,
                             lr=train.lr, local_steps=train.local_steps, batch_size=train.batch_size)
        cases[probe_keys(a.scenario)[0]] = ProbeCase(view, *references)
    else:
        examples = a.examples(pr.client.client_id)
        order = rng(a.seed, "probe").permutation(len(examples)).tolist()
        for n, (size, index) in enumerate(probe_keys(a.scenario)):
            progress(f"probe batch {index + 1}/{a.scenario.probe.batches} of size {size}")
            if n:  # the previous probe is read into its view: dropping its ciphertext bounds memory
                transcript.drop_last("probe")
            batch_ex = [examples[i] for i in probe_batch(order, size, index)]
            update = pr.parties.client.probe_update(pr.client, pr.rnd, pr.start, batch_ex)
            upload(pr.parties, update, pr.rnd, pr.channel, kind="probe")
            view = attacker_view(pr.parties.server, transcript, pr.client, pr.rnd, "probe", public,
                                 lr=th.lr, local_steps=1 if th.observation == "grad" else th.steps,
                                 batch_size=len(batch_ex))
            cases[(size, index)] = ProbeCase(view, *seen_private(a.loaded.tokenizer, a.spec, batch_ex))
    round_view, is_member = membership_view(a, public, pr)
    return ProbeResult(cases, round_view, is_member, *a.spec.private_format())


def observe_sums(a: Assets, public: PublicFacts, pr: ProbeRound, progress: Callable[[str], None]) -> dict[ProbeKey, ProbeCase]:
    """The server that sees only sums, attacked on one: for each probe case every participant of the
    round that uploaded computes its probe update on a private batch of its own (the probe batch size;
    the target's is the batch other defenses' probes use), the batches run one secure round through the
    defense's own protocol (recorded in a transcript of its own, unmetered: an observation, not traffic;
    the case keeps it) and the view is what the server reads off that round and the run's transcript
    (``sum_view.read_sum_view``). The truth is the union of the batches."""
    th = a.scenario.threat
    transcript = pr.channel.transcript
    who = [cid for cid in sorted(pr.results) if transcript.find("upload", cid, pr.rnd) is not None]
    clients = {cid: pr.results[cid].update.client for cid in who}
    orders = {cid: rng(a.seed, "probe").permutation(len(a.examples(cid))).tolist() if cid == pr.client.client_id
              else rng(a.seed, "probe", cid).permutation(len(a.examples(cid))).tolist() for cid in who}
    run_at = len(transcript.messages)
    cases: dict[ProbeKey, ProbeCase] = {}
    for size, index in probe_keys(a.scenario):
        progress(f"probe sum of {len(who)} batches {index + 1}/{a.scenario.probe.batches} of size {size}")
        batches = {cid: [a.examples(cid)[i] for i in probe_batch(orders[cid], size, index)] for cid in who}
        updates = [pr.parties.client.probe_update(clients[cid], pr.rnd, pr.start if cid == pr.client.client_id
                                                  else pr.starts[cid], batches[cid]) for cid in who]
        sum_round = secure_sum(pr, updates)
        union = [ex for cid in who for ex in batches[cid]]
        view = read_sum_view(pr.parties.server, transcript, sum_round, pr.client, clients, pr.rnd, public,
                             lr=th.lr, local_steps=1 if th.observation == "grad" else th.steps,
                             batch_size=len(union))
        cases[(size, index)] = ProbeCase(view, *seen_private(a.loaded.tokenizer, a.spec, union),
                                         sum_round=sum_round, run_at=run_at)
    return cases


def secure_sum(pr: ProbeRound, updates: Sequence[ClientUpdate]) -> Transcript:
    """One round of the defense's protocol over ``updates`` on a channel of its own (nothing metered,
    nothing added to the run's transcript), ending in the server's aggregate (it unmasks the sum and
    keeps it: ``unmasked_sum``); returns that round's transcript (every message the server sent and
    received in it). No broadcast follows: the sum is an observation, not a model."""
    channel = Channel(WireMeter(), Transcript())
    clients = [u.client for u in updates]
    negotiate(pr.parties, updates, pr.rnd, channel)
    exchange(pr.parties, clients, [], pr.rnd, channel)
    sent = [upload(pr.parties, u, pr.rnd, channel, kind="probe") for u in updates]
    uploads = [s for s in sent if s is not None]
    exchange(pr.parties, clients, [s.payload for s in uploads], pr.rnd, channel)
    if uploads:
        aggregate(pr.parties, uploads)
    return channel.transcript


def membership_view(a: Assets, public: PublicFacts, pr: ProbeRound) -> tuple[AttackerView | None, list[bool]]:
    """The target's real upload of the probe round, with membership candidates (a classification
    record carries its label): members are distinct records it trained on in this round (its upload's change over the start reflects this
    round only), non-members its held-out examples (same client, same label mix, never trained
    on by it, nor by anyone if the text recurs elsewhere in the training set), equally many."""
    result = pr.results.get(pr.client.client_id)
    if result is None:
        return None, []
    trained = list(dict.fromkeys(zip(result.texts, (ex.label for ex in result.examples))))
    reserved = set(a.holdout)
    everyone = {a.spec.prompt(ex) for i, ex in enumerate(a.data.train) if i not in reserved}
    held_ex = (a.data.train[i] for i in a.holdout)
    held = list(dict.fromkeys((t, ex.label) for ex in held_ex if (t := a.spec.prompt(ex)) not in everyone))
    k = min(a.scenario.probe.members, len(trained), len(held))
    gen = rng(a.seed, "members")
    members = [trained[i] for i in gen.permutation(len(trained))[:k]]
    outsiders = [held[i] for i in gen.permutation(len(held))[:k]]
    pool = [(r, True) for r in members] + [(r, False) for r in outsiders]
    pool = [pool[i] for i in gen.permutation(len(pool))]
    labelled = a.spec.task == "classification"
    train = a.scenario.train
    view = attacker_view(pr.parties.server, pr.channel.transcript, pr.client, pr.rnd, "upload", public,
                         candidates=[t for (t, _), _ in pool],
                         candidate_labels=[y for (_, y), _ in pool] if labelled else None,
                         local_steps=train.local_steps, lr=train.lr, batch_size=train.batch_size)
    return view, [m for _, m in pool]
