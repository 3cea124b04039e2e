"""Gradient matching on a tiny random Llama: exact single-example recovery, masks, honest refusals."""

import copy

import pytest
import toy

from attacks.grad_match import GradMatch, GradMatchParams
from benchmark.running.metrics import score_reconstruction

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/attack_fixtures.py

T = "Tweet: {text}\nSentiment:"
TEXT = ["i really love the new phone"]


@pytest.fixture(scope="module")
def view(tok):
    base = toy.tiny_llama(len(tok), layers=4)
    pm = toy.lora_wrap(copy.deepcopy(base), r=16)
    return toy.client_view(pm, copy.deepcopy(base), tok, TEXT, T)


def test_recovers_one_example_with_half_of_a_hidden(tok, view):
    hidden = toy.hide_columns(view, 0.5)
    rec = GradMatch(GradMatchParams(mode="adaptive", steps=150, restarts=1)).reconstruct(hidden)
    s = score_reconstruction(toy.references(tok, TEXT, T), rec.texts, tok, template=T)
    assert s["rouge1"] >= 0.8
    assert rec.extra["match_cos"] > 0.99


def test_declines_multi_step_adamw_and_large_models(view):
    from dataclasses import replace

    for rec, why in ((GradMatch().reconstruct(replace(view, kind="weights", local_steps=2)), "single-step"),
                     (GradMatch(GradMatchParams(max_params=1000)).reconstruct(view), "GPU"),
                     (GradMatch().reconstruct(replace(view, prev=None, start_known="none")), "does not know")):
        assert rec.status == "abstained" and why in rec.note and rec.texts == []


def test_params_are_validated():
    with pytest.raises(ValueError):
        GradMatchParams(loss="l3")
    with pytest.raises(ValueError):
        GradMatchParams(mode="clever")
