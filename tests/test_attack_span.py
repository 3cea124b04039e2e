"""Span attacks (dager, token_leak, subspace_rank) on a tiny random Llama with peft LoRA gradients."""

import copy
from dataclasses import replace

import pytest
import torch
import toy

from attacks.dager import DAGER, DAGERParams
from attacks.subspace_rank import SubspaceRank, SubspaceRankParams
from attacks.token_leak import TokenLeak, TokenLeakParams
from benchmark.running.metrics import score_reconstruction

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/attack_fixtures.py

T = "Tweet: {text}\nSentiment:"
TEXTS = ["i really love the new phone it works great", "the weather today is awful and cold"]


def make_view(tok, base, batch=1, r=64, b_std=0.02, **kw):
    pm = toy.lora_wrap(copy.deepcopy(base), r=r, b_std=b_std)
    return toy.client_view(pm, copy.deepcopy(base), tok, TEXTS[:batch], T, **kw)


def prompts(tok, batch):
    return sorted(tok(T.format(text=t), add_special_tokens=False)["input_ids"] for t in TEXTS[:batch])


def recovered_prompts(rec):
    return sorted(ids[:-1] for ids in rec.token_ids)  # the label token is a separate guess


@pytest.mark.parametrize("batch", [1, 2])
def test_dager_exact_when_tokens_below_rank(tok, base, batch):
    view = make_view(tok, base, batch)
    rec = DAGER().reconstruct(view)
    assert recovered_prompts(rec) == prompts(tok, batch)
    assert rec.extra["saturated_l0"] == 0.0
    s = score_reconstruction(toy.references(tok, TEXTS[:batch], T), rec.texts, tok, template=T)
    assert s["rouge1"] >= 0.9


def test_dager_label_completion_single_example(tok, base):
    rec = DAGER().reconstruct(make_view(tok, base, 1))
    assert rec.texts == toy.references(tok, TEXTS[:1], T)


def test_dager_round_one_uses_the_b_gradient(tok, base):
    view = make_view(tok, base, 2, b_std=0.0)  # peft's B = 0: dL/dA vanishes
    assert all(float(m.A.abs().max()) == 0.0 for m in view.modules.values())
    rec = DAGER().reconstruct(view)
    assert recovered_prompts(rec) == prompts(tok, 2)


def test_dager_sgd_delta(tok, base):
    rec = DAGER().reconstruct(make_view(tok, base, 1, kind="sgd", steps=2, lr=0.05))
    assert recovered_prompts(rec) == prompts(tok, 1)


def test_adaptive_beats_naive_on_hidden_columns(tok, base):
    view = toy.hide_columns(make_view(tok, base, 2), 0.5)
    naive = DAGER(DAGERParams(mode="naive")).reconstruct(view)
    adaptive = DAGER(DAGERParams(mode="adaptive")).reconstruct(view)
    refs = toy.references(tok, TEXTS[:2], T)
    assert score_reconstruction(refs, naive.texts, tok)["rouge1"] < 0.2
    assert recovered_prompts(adaptive) == prompts(tok, 2)
    leak_naive = TokenLeak(TokenLeakParams(mode="naive")).reconstruct(view)
    leak_adaptive = TokenLeak(TokenLeakParams(mode="adaptive")).reconstruct(view)
    assert score_reconstruction(refs, leak_adaptive.texts, tok)["token_precision"] > 0.8
    assert score_reconstruction(refs, leak_naive.texts, tok)["token_recall"] < 0.2


def test_adaptive_tolerates_a_secret_column_permutation(tok, base):
    view = toy.hide_columns(make_view(tok, base, 2), 0.25, permute=8)
    assert DAGER(DAGERParams(mode="naive")).reconstruct(view).texts == []
    assert recovered_prompts(DAGER(DAGERParams(mode="adaptive")).reconstruct(view)) == prompts(tok, 2)


def test_too_few_visible_columns_gives_a_note(tok, base):
    view = toy.hide_columns(make_view(tok, base, 1), 0.8)
    rec = DAGER(DAGERParams(mode="adaptive", strict=True)).reconstruct(view)  # version 2 reads A only
    assert rec.texts == [] and "coordinates" in rec.note


def test_hidden_a_columns_leave_the_b_path_to_a_known_start(tok, base):
    """With 80% of A's columns hidden the A path is vacuous, but B is in the clear and the start is
    known exactly here: version 3 reads the span where the signal is, dL/dB through A0."""
    view = toy.hide_columns(make_view(tok, base, 1), 0.8)
    rec = DAGER(DAGERParams(mode="adaptive")).reconstruct(view)
    assert recovered_prompts(rec) == prompts(tok, 1)


def test_tokens_exceeding_the_rank_are_reported_not_raised(tok, base):
    view = make_view(tok, base, 2, r=8)
    rec = DAGER().reconstruct(view)
    assert "saturated" in rec.note
    soft = SubspaceRank().reconstruct(view)
    assert soft.texts and soft.extra["dim"] < 8


def test_adamw_delta_defeats_dager_and_is_ranked_by_subspace_rank(tok, base):
    view = make_view(tok, base, 1, kind="adamw", steps=1, lr=1e-3)
    strict = DAGER(DAGERParams(strict=True)).reconstruct(view)  # rescaling breaks the span: no token passes
    assert strict.status == "ok" and strict.texts == [] and "span" in strict.note
    rec = DAGER().reconstruct(view)  # version 3 reads it as noise and fills the batch with what stands out
    assert rec.status == "ok" and "noisy" in rec.note
    assert score_reconstruction(toy.references(tok, TEXTS[:1], T), rec.texts, tok, template=T)["rouge1"] < 0.2
    soft = SubspaceRank(SubspaceRankParams(mode="naive")).reconstruct(view)
    assert len(soft.texts) == 1 and soft.token_ids


def test_token_leak_bag_is_the_batch_vocabulary(tok, base):
    view = make_view(tok, base, 2)
    rec = TokenLeak().reconstruct(view)
    true_ids = {i for t in TEXTS[:2] for i in tok(T.format(text=t), add_special_tokens=False)["input_ids"]}
    assert set(rec.token_ids[0]) == true_ids  # every visible token, nothing else
    assert rec.extra["bag_size"] == len(true_ids)


def test_subspace_rank_orders_an_exact_batch(tok, base):
    view = make_view(tok, base, 2)
    rec = SubspaceRank().reconstruct(view)
    s = score_reconstruction(toy.references(tok, TEXTS[:2], T), rec.texts, tok, template=T)
    assert s["rouge1"] > 0.8


def test_noise_degrades_gracefully(tok, base):
    view = make_view(tok, base, 1)
    gen = torch.Generator().manual_seed(0)
    noisy = {n: replace(m, A=m.A + 0.3 * m.A.std() * torch.randn(m.A.shape, generator=gen),
                        B=m.B + 0.3 * m.B.std() * torch.randn(m.B.shape, generator=gen))
             for n, m in view.modules.items()}
    view = replace(view, modules=noisy)
    dager = DAGER().reconstruct(view)  # noise breaks the exact span: fewer or no tokens pass, never a crash
    assert dager.status in ("ok", "abstained") and all(isinstance(t, str) for t in dager.texts)
    assert dager.texts or dager.note  # nothing found is said, not silent
    rec = SubspaceRank().reconstruct(view)
    assert score_reconstruction(toy.references(tok, TEXTS[:1], T), rec.texts, tok)["token_recall"] > 0.2


def test_encoder_bag_survives_training_dropout(tok):
    base = toy.tiny_bert(len(tok), dropout=0.1)
    pm = toy.lora_wrap(copy.deepcopy(base), r=32, targets=("query", "value"))
    view = toy.encoder_view(pm, copy.deepcopy(base), tok, TEXTS[:1])
    rec = TokenLeak().reconstruct(view)
    assert set(rec.token_ids[0]) == set(tok(TEXTS[0])["input_ids"])
    dag = DAGER().reconstruct(view)
    assert score_reconstruction(TEXTS[:1], dag.texts, tok)["token_recall"] >= 0.8


DIGITS = ["back in 2 0 1 4 we won 1 1 1 games", "so so so good , 9 9 9 9 stars"]


@pytest.mark.parametrize("b_std", [0.02, 0.0], ids=["later_round", "round_one_b_path"])
def test_dager_orders_digit_runs_and_repeated_tokens(tok, base, b_std):
    """Single-digit tokens in a run (how SmolLM2 splits years) and a token repeated back to back must
    come out in order and with their multiplicity: the bag holds each token once, so the decode has
    to reuse bag tokens and tell "1 1 1" from "1 1" by the second layer alone."""
    pm = toy.lora_wrap(copy.deepcopy(base), r=64, b_std=b_std)
    view = toy.client_view(pm, copy.deepcopy(base), tok, DIGITS, T)
    rec = DAGER().reconstruct(view)
    want = sorted(tok(T.format(text=t), add_special_tokens=False)["input_ids"] for t in DIGITS)
    assert recovered_prompts(rec) == want
