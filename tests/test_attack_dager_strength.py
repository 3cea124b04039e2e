"""DAGER at the original's strength (issue 30, item 1) on hand-built tiny-Llama views: the path read by
where the signal is, a rank that survives noise, near-miss continuation, batch fill and the
noise-tolerant token bag, each beside ``strict = true`` (version 2's reading) where that fails."""

import copy
import math
from dataclasses import replace

import pytest
import torch
import toy

from attacks.dager import DAGER, DAGERParams
from attacks.fedspy import FedSpy
from attacks.toolkit.decoding import Decoded, beam_decode, fill_batch, layer_checks, select_tokens, token_bag
from attacks.toolkit.subspace import SpanRules, estimate_rank, noise_rank
from attacks.toolkit.textutil import harness_ids
from attacks.utr import UTR
from benchmark.config import params_from_dict, suite_from_dict
from benchmark.running.metrics import score_reconstruction

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/attack_fixtures.py

T = "Tweet: {text}\nSentiment:"
TEXTS = ["i really love the new phone it works great", "the weather today is awful and cold"]


def round_one_view(tok, base, batch=2):
    """peft's round-1 start (B = 0) known exactly: dL/dA is zero, the signal is on dL/dB."""
    pm = toy.lora_wrap(copy.deepcopy(base), r=64, b_std=0.0)
    return toy.client_view(pm, copy.deepcopy(base), tok, TEXTS[:batch], T)


def with_noise(view, on_a=0.0, on_b=0.0, seed=0):
    """Gaussian noise on each observed factor: ``on_a`` per coordinate (absolute, as DP adds it to a
    zero dL/dA), ``on_b`` relative to dL/dB's norm (noise norm / signal norm)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in view.modules.items():
        A = m.A + on_a * torch.randn(m.A.shape, generator=gen)
        B = m.B + on_b * m.B.norm() / math.sqrt(m.B.numel()) * torch.randn(m.B.shape, generator=gen)
        out[name] = replace(m, A=A, B=B)
    return replace(view, modules=out)


def prompts(tok, batch):
    return sorted(tok(T.format(text=t), add_special_tokens=False)["input_ids"] for t in TEXTS[:batch])


def members(tok, batch):
    return {i for ids in prompts(tok, batch) for i in ids}


def rouge1(tok, rec, batch):
    if not rec.texts:
        return 0.0
    return score_reconstruction(toy.references(tok, TEXTS[:batch], T), rec.texts, tok, template=T)["rouge1"]


@pytest.mark.parametrize("on_a", [1e-9, 1e-3])
def test_noise_on_dl_da_does_not_hide_the_clean_dl_db_path(tok, base, on_a):
    view = with_noise(round_one_view(tok, base), on_a=on_a)
    first = layer_checks(view, False, 1e-7, rules=SpanRules())[0]
    assert {s.path for s in first.spans} == {"B"}
    rec = DAGER().reconstruct(view)
    assert sorted(ids[:-1] for ids in rec.token_ids) == prompts(tok, 2)
    assert rouge1(tok, rec, 2) >= 0.95
    strict = DAGER(DAGERParams(strict=True)).reconstruct(view)  # reads the pure-noise A path
    assert rouge1(tok, strict, 2) < 0.2
    assert strict.extra["rank_l0"] >= 60  # "saturated" by noise, where the batch holds 20 tokens


@pytest.mark.parametrize("attack", [FedSpy, UTR], ids=["fedspy", "utr"])
def test_fedspy_and_utr_share_the_path_choice(tok, base, attack):
    view = with_noise(round_one_view(tok, base), on_a=1e-9)  # version 1 of both read the noise
    rec = attack().reconstruct(view)
    assert rec.extra["rank_l0"] < 30
    assert rouge1(tok, rec, 2) >= 0.95


def test_rank_counts_signal_not_noise():
    gen = torch.Generator().manual_seed(0)
    p, q, k = 256, 576, 30
    U = torch.linalg.qr(torch.randn(p, k, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(q, k, generator=gen, dtype=torch.float64))[0]
    S = U @ torch.diag(torch.logspace(0, -2, k, dtype=torch.float64)) @ V.T
    noise = torch.randn(p, q, generator=gen, dtype=torch.float64)
    M = S + 1e-2 * S.norm() / math.sqrt(p * q) * noise
    s = torch.linalg.svdvals(M)
    est = noise_rank(s, q)
    assert 27 <= est.rank <= 31 and not est.saturated and est.noise > 1e-5
    assert estimate_rank(s) == (p, True)  # the largest-gap rule finds no gap and counts everything
    assert noise_rank(torch.linalg.svdvals(noise), q).rank <= 2  # pure noise has no signal directions
    clean = torch.linalg.svdvals(S + 1e-9 * noise)
    assert noise_rank(clean, q).rank == k


def test_rank_of_a_noisy_view_is_near_its_distinct_tokens(tok, base):
    view = with_noise(round_one_view(tok, base), on_a=1e-3, on_b=1e-2)
    first = layer_checks(view, False, 1e-7, rules=SpanRules())[0]
    assert first.noisy
    assert abs(first.rank - len(members(tok, 2))) <= 3  # 20 distinct tokens; the old rule says 64


def test_a_saturated_clean_span_is_not_read_as_noise(tok, base):
    pm = toy.lora_wrap(copy.deepcopy(base), r=8)
    view = toy.client_view(pm, copy.deepcopy(base), tok, TEXTS, T)
    first = layer_checks(view, False, 1e-7, rules=SpanRules())[0]
    assert first.saturated and not first.noisy


def test_noise_tolerant_bag_keeps_the_tokens_that_stand_out(tok, base):
    view = with_noise(round_one_view(tok, base), on_a=1e-3, on_b=3e-2)
    first = layer_checks(view, False, 1e-7, rules=SpanRules())[0]
    want = members(tok, 2)
    cap = 2 * first.rank + 8
    by_z, _ = token_bag(view.model, first, 0.05, cap, 1e-7, z=5.0)
    by_tau, _ = token_bag(view.model, first, 0.05, cap, 1e-7)
    recall_z = len(want & set(by_z)) / len(want)
    assert recall_z >= 0.9 and len(want & set(by_z)) / len(by_z) >= 0.9
    assert len(want & set(by_tau)) / len(want) <= 0.5  # members drift past a fixed threshold


def test_dager_switches_to_the_noise_tolerant_bag_on_a_noisy_span(tok, base):
    view = with_noise(round_one_view(tok, base), on_a=1e-3, on_b=1e-2)
    rec = DAGER().reconstruct(view)
    assert "z-score" in rec.note and rec.extra["noise_l0"] > 1e-4
    assert rouge1(tok, rec, 2) >= 0.8
    off = DAGER(DAGERParams(noise_mode="off")).reconstruct(view)
    assert "z-score" not in off.note
    clean = DAGER(DAGERParams(noise_mode="auto")).reconstruct(round_one_view(tok, base))
    assert "z-score" not in clean.note


def test_near_misses_carry_sentences_over_a_missed_step(tok, base):
    view = with_noise(round_one_view(tok, base), on_a=1e-3, on_b=3e-3)
    second = layer_checks(view, False, 1e-7, rules=SpanRules())[1]
    tpl = harness_ids(tok, T, True)
    start, stops = list(tpl.start), [list(tpl.suffix)]
    bag = sorted(members(tok, 2))
    want = prompts(tok, 2)

    def hits(near: int) -> int:
        found = beam_decode(view.model, second, bag, [start], 1e-2, 30, 16, near_misses=near, stops=stops)
        return sum(s in want for s in fill_batch(found, len(start), 2, stops=stops))

    assert hits(0) == 0  # each true sentence has a step just over the threshold and dies there
    assert hits(2) >= 1


def test_batch_fill_returns_batch_size_sequences(tok, base):
    view = replace(round_one_view(tok, base), batch_size=4)  # the server expects more than were found
    rec = DAGER().reconstruct(view)
    assert len(rec.texts) == 4
    assert all(p in [ids[:-1] for ids in rec.token_ids] for p in prompts(tok, 2))
    assert len(DAGER(DAGERParams(strict=True)).reconstruct(view).texts) == 2


def test_fill_batch_prefers_exact_then_distinct_near_misses():
    found = [Decoded([1, 5, 6, 7, 3], 0.01), Decoded([1, 5, 6, 7], 0.005), Decoded([1, 5, 6, 7, 4], 0.02),
             Decoded([1, 9, 9, 9, 9], 0.2, misses=1), Decoded([1, 5, 6, 7, 3, 2], 0.3, misses=2)]
    assert fill_batch(found, 1, 1) == [[1, 5, 6, 7, 3]]  # an exact prefix is no result of its own
    assert fill_batch(found, 1, 2) == [[1, 5, 6, 7, 3], [1, 9, 9, 9, 9]]  # a variant of a chosen one waits
    assert len(fill_batch(found, 1, 4)) == 4


def test_strict_is_version_two_and_a_suite_can_name_it():
    suite = suite_from_dict({"attacks": ["dager", {"name": "dager", "label": "dager_strict", "strict": True}]})
    old = suite.attacks[1]
    assert (old.name, old.label) == ("dager", "dager_strict")
    p = params_from_dict(DAGERParams, dict(old.params), "attack.dager_strict")
    assert (p.layer0_tau, p.layer1_tau, p.rules.signal_path, p.rules.noise_rank) == (1e-3, 1e-2, False, False)
    new = DAGERParams()
    assert (new.layer0_tau, new.layer1_tau, new.rules.signal_path) == (0.05, 0.05, True)
    assert DAGERParams(strict=True, tau1=0.2).layer0_tau == 0.2
    assert DAGER.version == "6"
    with pytest.raises(ValueError, match="noise_mode"):
        DAGERParams(noise_mode="sometimes")


def test_rank_stops_at_a_drop_onto_float_rounding():
    """An SGD step's difference from an exact float32 start: 29 signal values over four decades, then a
    drop of 150 onto a slowly decaying rounding tail (SmolLM2's round-2 v_proj), which the noise law
    fitted to the tail counts a hundred deep."""
    signal = torch.logspace(0, -3.6, 29, dtype=torch.float64)
    s = torch.cat([signal, torch.logspace(-5.8, -6.7, 227, dtype=torch.float64)])
    est = noise_rank(s, 576)
    assert est.rank == 29 and est.noise < 1e-5 and est.member_error(s) < 1e-2
    assert noise_rank(s, 576, rounding=0.0).rank > 60  # version 3's first reading of it
    noisy = torch.cat([signal[:20], torch.logspace(-3.3, -4.2, 236, dtype=torch.float64)])  # a drop onto noise
    assert noise_rank(noisy, 576).rank == noise_rank(noisy, 576, rounding=0.0).rank


def test_a_clean_span_of_a_layer_outvotes_a_blurred_one(tok, base):
    view = sgd_view(tok, base)
    first = layer_checks(view, False, 1e-7, rules=SpanRules())[0]
    clean = first.spans[0]
    blurred = replace(clean, rank=3 * clean.rank, member_error=50.0)
    check = replace(first, spans=[blurred, clean])
    assert check.rank == clean.rank and check._useful() == [1]
    assert replace(first, spans=[blurred, replace(clean, member_error=50.0)]).rank == 3 * clean.rank


def test_fill_batch_keeps_an_exact_truncated_sentence_on_a_clean_span():
    exact = Decoded([1, 5, 6, 7], 0.004)
    grown = Decoded([1, 5, 6, 7, 8, 3, 2], 0.03, misses=2)  # near-misses that reach the ending [3, 2]
    assert fill_batch([exact, grown], 1, 1, stops=[[3, 2]]) == [grown.ids]  # noisy span: the ending wins
    assert fill_batch([exact, grown], 1, 1, stops=[[3, 2]], clean=True) == [exact.ids]


def sgd_view(tok, base, text=TEXTS[0] + " and the battery lasts all day"):
    """One SGD step from an exact round-2 start (B != 0) on a tweet the client's sequence length cut
    before the template's ending (the batch never reaches it); observed minus start carries float32
    rounding decades under the signal."""
    pm = toy.lora_wrap(copy.deepcopy(base), r=64)
    view = toy.client_view(pm, copy.deepcopy(base), tok, [text], "Tweet: {text}", kind="sgd", lr=0.05, label="")
    return replace(view, template=T)


def test_v3_returns_a_truncated_sentence_exactly(tok, base):
    view = sgd_view(tok, base)
    want = tok("Tweet: " + TEXTS[0] + " and the battery lasts all day", add_special_tokens=False)["input_ids"]
    first, second = layer_checks(view, False, 1e-7, rules=SpanRules())[:2]
    assert not first.noisy and not second.noisy and first.rank <= len(set(want)) + 1
    tpl = harness_ids(tok, T, True)
    found = beam_decode(view.model, second, sorted(set(want)), [list(tpl.start)], 0.05, 30, 16, near_misses=1,
                        stops=[list(tpl.suffix)], row_z=3.0, clean=True)
    assert all(f.misses == 0 for f in found)  # the exact sentence ended: nothing grows past it by near-misses
    rec = DAGER().reconstruct(view)
    assert len(rec.token_ids) == 1 and rec.token_ids[0][: len(want)] == want
    assert len(rec.token_ids[0]) <= len(want) + 1  # the label completion may add one token


def estimated_start(view, rel_error=0.3, seed=0):
    """The view as a server sees it that never saw the round-1 start: A0 known only as an estimate,
    off in every entry (as an upload's A1 = A0 + dA is, AdamW moving each entry), B0 = 0 still."""
    gen = torch.Generator().manual_seed(seed)
    prev = {n: replace(f, A=f.A + rel_error * f.A.std() * torch.randn(f.A.shape, generator=gen))
            for n, f in view.prev.items()}
    return replace(view, prev=prev, start_known="estimate")


def test_an_estimated_start_is_read_against_the_vocabulary_not_an_absolute_threshold(tok, base):
    """Round 1 at an estimated A0: every token's B-path distance moves by the estimate's error, so
    the 0.05 threshold keeps no token, while adaptive DAGER's bag (z-scores against the vocabulary)
    holds the batch's tokens; naive mode keeps the threshold."""
    view = estimated_start(round_one_view(tok, base))
    first = layer_checks(view, True, 1e-7, rules=SpanRules())[0]
    assert {s.path for s in first.spans} == {"B"}
    assert token_bag(view.model, first, DAGERParams().layer0_tau, 512, 1e-7)[0] == []
    rec = DAGER(DAGERParams(mode="adaptive")).reconstruct(view)
    assert "estimate" in rec.note
    got = {i for ids in rec.token_ids for i in ids}
    assert len(members(tok, 2) & got) >= 0.9 * len(members(tok, 2))
    assert len(got) <= 2 * len(members(tok, 2))
    assert DAGER(DAGERParams(mode="naive")).reconstruct(view).token_ids == []


def test_an_estimated_starts_bag_is_the_z_score_bag_unless_too_many_stand_out():
    """``nearest``: a few members standing out from the vocabulary are the bag (not the ``nearest``
    count); when more stand out than the bag can hold, the vocabulary is no null and the span's rank
    of nearest tokens is the bag."""
    gen = torch.Generator().manual_seed(0)
    d = 0.4 + 0.2 * torch.rand(1000, generator=gen)
    d[[3, 50, 700]] = torch.tensor([0.01, 0.012, 0.011])
    assert sorted(select_tokens(d, 0.05, 20, z=5.0, nearest=8).tolist()) == [3, 50, 700]
    crowd = d.clone()
    crowd[:100] = 0.001 * torch.arange(1, 101)  # a hundred stand out; the bag holds 20 at most
    got = select_tokens(crowd, 0.05, 20, z=5.0, nearest=8)
    assert got.tolist() == list(range(8))
    assert select_tokens(crowd, 0.05, 20, z=5.0).numel() == 20  # without ``nearest``: the cap
