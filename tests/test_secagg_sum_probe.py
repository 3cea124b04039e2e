"""The span attacks on the round's sum: under ``secagg`` the server holds only the sum it unmasked, so
the probe observes one sum of every participant's probe update (each on a private batch of its own)
and scores it against the union of the batches; per-client attacks stay incompatible; plain LoRA's
probe is unchanged."""

from __future__ import annotations

import pytest
import torch

from benchmark.config import ComponentSpec
from benchmark.contract import LoRAFactors, StartKnowledge
from benchmark.federation.sum_view import sum_modules
from she_lora.lowrank import relative_error


def _start(A: torch.Tensor, m: int) -> StartKnowledge:
    return StartKnowledge({"q": LoRAFactors(A, torch.zeros(m, A.shape[0]), 2.0)}, "exact")


@pytest.mark.parametrize("shared", [True, False])
def test_the_sum_is_read_through_the_stacked_starting_a(shared):
    """W = sum_i w_i s_i dB_i A0_i: the view's B is the summed dB per distinct A0, exactly."""
    gen = torch.Generator().manual_seed(0)
    m, n = 12, 40
    A1 = torch.randn(4, n, generator=gen, dtype=torch.float64)
    A2 = A1 if shared else torch.randn(6, n, generator=gen, dtype=torch.float64)
    g1, g2 = torch.randn(m, 4, generator=gen, dtype=torch.float64), torch.randn(m, A2.shape[0], generator=gen,
                                                                                  dtype=torch.float64)
    w1, w2, s = 0.3, 0.7, 2.0
    dense = {"q": w1 * s * g1 @ A1 + w2 * s * g2 @ A2}
    modules, prev, known, note = sum_modules(dense, [_start(A1, m), _start(A2, m)], "grad")
    om = modules["q"]
    assert known == "exact" and om.A.abs().max() == 0  # a gradient at B = 0 moves no A
    assert torch.equal(prev["q"].B, torch.zeros_like(om.B))
    if shared:
        assert om.B.shape == (m, 4) and torch.allclose(om.B, s * (w1 * g1 + w2 * g2))
        assert "1 distinct" in note
    else:
        assert om.B.shape == (m, 10) and torch.allclose(om.B, torch.cat([w1 * s * g1, w2 * s * g2], dim=1))
        assert "2 distinct" in note and "mix per-client blocks" in note
    assert torch.allclose(om.B @ prev["q"].A, dense["q"])


def test_a_start_with_b_not_zero_reads_the_dense_sum_as_an_a_update():
    gen = torch.Generator().manual_seed(1)
    A, B = torch.randn(4, 20, generator=gen), torch.randn(8, 4, generator=gen)
    W = torch.randn(8, 20, generator=gen, dtype=torch.float64)
    modules, prev, known, note = sum_modules({"q": W}, [StartKnowledge({"q": LoRAFactors(A, B, 1.0)}, "exact")], "sgd")
    assert torch.equal(modules["q"].A, W) and torch.equal(modules["q"].B, torch.eye(8, dtype=W.dtype))
    assert prev["q"].A.abs().max() == 0 and known == "exact" and "dense sum" in note


@pytest.fixture(scope="module")
def sims():
    """One round of tiny under secagg and plain LoRA: name -> (driver, result)."""
    from benchmark.engines import inproc
    from benchmark.running.catalog import resolve_scenario
    from defenses.plain_lora import PlainLoRA
    from defenses.secagg import SecAgg

    torch.set_num_threads(1)
    scenario = resolve_scenario("tiny", {"rounds": 1})
    out = {}
    for d in (SecAgg(), PlainLoRA()):
        driver = inproc.build_driver(scenario, d, 0)
        out[d.name] = (driver, driver.run())
    return out


def test_dager_reads_the_secagg_sum_as_the_union_of_every_participants_batch(sims):
    from benchmark.running.execution import run_attack

    sim, plain = sims["secagg"][1], sims["plain_lora"][1]
    case, plain_case = sim.probe.first, plain.probe.first
    assert sim.probe.cases.keys() == plain.probe.cases.keys()
    # tiny: two participants in round 1, batch size 1 each; the target's batch is plain LoRA's probe batch
    assert len(case.references) == 2 and plain_case.references[0] in case.references
    assert case.view.summed == 2 and case.view.batch_size == 2 and case.view.start_known == "exact"
    row = run_attack(ComponentSpec("dager", "dager"), "naive", sim)
    assert row["status"] == "ok" and row["n_reconstructed"] >= 1
    assert row["token_recall"] > 0.5  # scored against the union: the bag holds tokens of both batches
    # a per-client attack has no single client's update to read
    row = run_attack(ComponentSpec("grad_match", "grad_match"), "naive", sim)
    assert row["status"] == "incompatible" and "one_client" in row["attack_note"]


def test_plain_lora_probe_is_unchanged(sims):
    from benchmark.running.execution import run_attack

    plain = sims["plain_lora"][1]
    case = plain.probe.first
    assert len(case.references) == 1 and case.view.summed == 1 and case.view.defense == "plain_lora"
    row = run_attack(ComponentSpec("dager", "dager"), "naive", plain)
    assert row["status"] == "ok" and row["token_recall"] > 0.9


def test_the_probe_sum_is_neither_metered_nor_in_the_run_transcript(sims):
    """The sum round is an observation: the run's transcript and bytes hold the real round only."""
    driver, sim = sims["secagg"]
    messages = driver.channel.transcript.messages
    keys = [m for m in messages if m.direction == "up" and m.payload.meta.get("stage") == "advertise_keys"]
    assert len(keys) == 2  # one round of two participants; the probe's own key agreement is not here
    assert not [m for m in messages if m.kind == "probe"]
    own = sim.probe.first.sum_round.messages  # the sum round is kept apart, for a replay of the view
    assert len([m for m in own if m.payload.meta.get("stage") == "advertise_keys"]) == 2
    assert len([m for m in own if m.kind == "probe"]) == 2 and not [m for m in own if m.kind == "upload"]
    assert sim.probe.first.run_at == len(messages)  # one round: the probe ran after the run's last message
    assert driver.meter.negotiation == sum(m.payload.nbytes() for m in messages if m.kind == "negotiation")
    assert sim.metrics["negotiation_bytes"] > 0


def test_only_the_span_attacks_read_sums():
    from benchmark.contract.plugins import ATTACKS

    readers = {n for n in ATTACKS.names() if ATTACKS.get(n).reads_sums}
    assert readers == {"dager", "fedspy", "utr", "subspace_rank"}
    assert all("one_client" in ATTACKS.get(n).needs() for n in ATTACKS.names() if n not in readers)


@pytest.mark.parametrize(("seed", "target_drops"), [(0, False), (2, True)])
def test_with_a_dropout_the_sum_probe_covers_the_survivors(seed, target_drops):
    from benchmark.engines import inproc
    from benchmark.federation.sampling import probe_target
    from benchmark.running.catalog import resolve_scenario
    from benchmark.running.execution import run_attack
    from defenses.secagg import SecAgg, SecAggParams

    torch.set_num_threads(1)
    scenario = resolve_scenario("tiny", {"rounds": 1, "clients_per_round": 3})
    sim = inproc.simulate(scenario, SecAgg(SecAggParams(dropouts=1)), seed)
    assert len(sim.rounds[0]["silent"]) == 1
    assert (probe_target(scenario, seed) in sim.rounds[0]["silent"]) == target_drops
    case = sim.probe.first
    assert case.view.summed == 2 and len(case.references) == 2  # the two that uploaded, one batch each
    assert run_attack(ComponentSpec("dager", "dager"), "naive", sim)["status"] == "ok"


def test_each_probe_round_replays_in_order_into_a_fresh_server():
    """Probe at round 1 of 2 with two probe cases: a fresh server role that replays the run's messages up
    to the probe and then the cases' own rounds in order reads each case's view again from those messages
    alone; replaying the rest of the run after them gives the run's round-2 broadcast (the live server
    met the rounds in that order)."""
    from benchmark.engines import inproc
    from benchmark.federation.sampling import probe_target
    from benchmark.federation.sum_view import replay_rounds, replayed_sum_view
    from benchmark.running.catalog import resolve_scenario
    from defenses.secagg import SecAgg

    torch.set_num_threads(1)
    scenario = resolve_scenario("tiny", {"rounds": 2, "probe": {"batches": 2},
                                         "threat": {"round": 1, "observation": "grad"}})
    driver = inproc.build_driver(scenario, SecAgg(), 0)
    result = driver.run()
    run, cases = driver.channel.transcript, list(result.probe.cases.values())
    at = cases[0].run_at
    assert len(cases) == 2 and {c.run_at for c in cases} == {at} and 0 < at < len(run.messages)
    assert all(c.sum_round is not None and c.sum_round is not run for c in cases)
    fresh = SecAgg().server  # never met a client
    fresh.setup(driver.fed, [m.payload for m in run.messages if m.kind == "setup"])
    replay_rounds(fresh, run.messages[:at])
    target = driver.fed.clients[probe_target(scenario, 0)]
    roster = {c.client_id: c for c in driver.fed.clients}
    th = scenario.threat
    views = [replayed_sum_view(fresh, run, c.sum_round, target, roster, th.round, driver.referee.public,
                               lr=th.lr, local_steps=1, batch_size=c.view.batch_size) for c in cases]
    for view, case in zip(views, cases):
        assert view.summed == case.view.summed == 2 and view.start_known == case.view.start_known == "exact"
        assert view.modules.keys() == case.view.modules.keys() and view.note == case.view.note
        for name, om in case.view.modules.items():  # the same sum and starts; LAPACK's lstsq may differ in the last bit
            assert relative_error(view.modules[name].B, om.B) < 1e-12 and torch.equal(view.modules[name].A, om.A)
            assert torch.equal(view.prev[name].A, case.view.prev[name].A)
    assert not all(torch.equal(views[0].modules[n].B, views[1].modules[n].B) for n in views[0].modules)
    last = replay_rounds(fresh, run.messages[at:])
    sent = [m for m in run.messages if m.kind == "broadcast"][-1].payload
    assert last is not None and last.plain.keys() == sent.plain.keys()
    assert all(torch.equal(last.plain[k], sent.plain[k]) for k in sent.plain)
