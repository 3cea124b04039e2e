"""UTR-style attack on a tiny random Llama: exact batches through the joint subspace, masks honoured
in adaptive mode, a bag that still holds the batch once the span saturates, honest refusals."""

import copy
from dataclasses import replace

import pytest
import toy
from attack_fixtures import TEXTS, T, make_view

from attacks.utr import UTR, UTRParams
from benchmark.running.metrics import score_reconstruction

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/attack_fixtures.py



def test_recovers_a_batch_of_two_beyond_one_modules_rank(tok, base):
    rec = UTR().reconstruct(make_view(tok, base, r=16))
    s = score_reconstruction(toy.references(tok, TEXTS, T), rec.texts, tok, template=T)
    assert s["rouge1"] >= 0.9 and len(rec.texts) == 2
    assert "utr variant" in rec.note


def test_adaptive_mode_recovers_through_hidden_columns(tok, base):
    view = toy.hide_columns(make_view(tok, base, r=64), 0.5)
    rec = UTR(UTRParams(mode="adaptive")).reconstruct(view)
    assert score_reconstruction(toy.references(tok, TEXTS, T), rec.texts, tok, template=T)["rouge1"] >= 0.9


def test_saturated_span_keeps_the_batch_in_the_bag(tok, base):
    view = make_view(tok, base, r=8)
    rec = UTR(UTRParams(propose=16, beams=1, max_len=20, complete_label=False)).reconstruct(view)
    assert "no exact bag" in rec.note and rec.extra["bag_size"] == 32
    s = score_reconstruction(toy.references(tok, TEXTS, T), rec.texts, tok)
    assert s["token_recall"] >= 0.6  # the template alone gives ~0.2


def test_ciphertext_only_view_abstains(tok, base):
    view = replace(make_view(tok, base, r=8, batch=1), defense="full_he", modules={}, cipher_bytes=1000)
    for mode in ("naive", "adaptive"):
        rec = UTR(UTRParams(mode=mode)).reconstruct(view)
        assert rec.status == "abstained" and rec.texts == [] and "ciphertext" in rec.note


def test_encoder_is_declined_with_a_reason(tok):
    base = toy.tiny_bert(len(tok), dropout=0.0)
    pm = toy.lora_wrap(copy.deepcopy(base), r=16, targets=("query", "value"))
    rec = UTR().reconstruct(toy.encoder_view(pm, copy.deepcopy(base), tok, TEXTS[:1]))
    assert rec.status == "abstained" and "decoder" in rec.note


def test_params_are_validated():
    with pytest.raises(ValueError):
        UTRParams(mode="sideways")
    with pytest.raises(ValueError):
        UTRParams(lm_weight=-1.0)


def test_an_exact_bag_is_not_cut_to_the_soft_bag_size(tok, base):
    view = make_view(tok, base, r=64, batch=1)
    rec = UTR(UTRParams(tokens_per_example=2, complete_label=False)).reconstruct(view)
    true_ids = set(tok(T.format(text=TEXTS[0]), add_special_tokens=False)["input_ids"])
    assert rec.extra["bag_size"] == len(true_ids)
    assert score_reconstruction(toy.references(tok, TEXTS[:1], T), rec.texts, tok)["token_recall"] >= 0.85
