"""The attack probe: the target client computes, the server observes, the harness keeps the truth.

At the threat's round the target's attacked messages are its real upload (``observation=upload``) or
one update per private probe batch from its real start (``sgd``/``grad``), each protected by the
client role and recorded like any upload. The attacker's views are built from the server's
transcript alone (``benchmark.federation.transcript.attacker_view``); the truth (private texts, membership)
never leaves the referee.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from benchmark.config import ScenarioConfig
from benchmark.contract import AttackerView, ClientInfo
from benchmark.federation.assets import Assets
from benchmark.federation.endpoint import Factors
from benchmark.federation.protocol import Parties, upload
from benchmark.federation.seeding import rng
from benchmark.federation.train import LocalResult, seen_private
from benchmark.federation.transcript import Channel, PublicFacts, attacker_view

ProbeKey = tuple[int, int]  # (batch size, index of the private batch)


@dataclass
class ProbeCase:
    """One observed probe message: the attacker's view of it, and the truth only the harness keeps
    (the private texts of the batch, no template, no label, and their input ids)."""

    view: AttackerView | None
    references: list[str]
    reference_ids: list[list[int]] = field(default_factory=list)  # the same, as the input ids the model saw


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


def observe(a: Assets, public: PublicFacts, pr: ProbeRound, progress: Callable[[str], None]) -> ProbeResult:
    """Every attacked message of the target in round ``pr.rnd`` and the attacker's view of each."""
    th, train = a.scenario.threat, a.scenario.train
    cases: dict[ProbeKey, ProbeCase] = {}
    transcript = pr.channel.transcript
    if th.observation == "upload":
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
