"""Membership inference against the client model rebuilt from a round upload (tiny random Llama)."""

import copy
import math
from dataclasses import replace

import pytest
import torch

from attacks import toy
from attacks.mia import MembershipInference, MIAParams, applied, visible_deltas
from benchmark.api import AttackerView, ObservedModule
from benchmark.metrics import membership_auc

T = "Tweet: {text}\nSentiment:"
MEMBERS = ["my cat sleeps all day long", "coffee at dawn is the best", "rain again on my birthday",
           "new shoes hurt my feet", "the bus was late twice", "pizza night with friends",
           "lost my keys at the gym", "sunny walk by the river"]
OTHERS = ["stocks fell sharply this morning", "the museum opens at nine", "he plays violin badly",
          "traffic jams every friday", "my laptop battery died", "snow covered the hills",
          "the soup was too salty", "kids built a sand castle"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def round_view():
    tok = toy.minilm_tokenizer()
    base = toy.tiny_llama(len(tok), layers=2)
    pm = toy.lora_wrap(copy.deepcopy(base), r=8)
    start = toy.lora_factors(pm)
    labels = [" positive", " negative"] * (len(MEMBERS) // 2)
    batch = toy.encode(tok, MEMBERS, T, label=labels)  # label-only loss, as the harness trains decoders
    params = [p for n, p in pm.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=3e-2)
    for _ in range(40):
        opt.zero_grad()
        pm(**batch).loss.backward()
        opt.step()
    trained = toy.lora_factors(pm)
    modules = {n: ObservedModule(A=f.A, B=f.B, scale=f.scale) for n, f in trained.items()}
    cands = [T.format(text=t) for t in MEMBERS + OTHERS]
    truth = [True] * len(MEMBERS) + [False] * len(OTHERS)
    view = AttackerView(defense="plain_lora", kind="weights", modules=modules, prev=start,
                        model=toy.public_model(base, start), tokenizer=tok, template=T, candidates=cands)
    return view, truth


@pytest.mark.parametrize("score", ["ref", "loss", "mink", "zlib"])
def test_scores_separate_members(round_view, score):
    view, truth = round_view
    rec = MembershipInference(MIAParams(score=score)).reconstruct(view)
    assert len(rec.membership_scores) == len(view.candidates)
    assert all(math.isfinite(x) for x in rec.membership_scores)
    if score != "zlib":  # zlib calibrates by compressibility, which a random-init model does not model
        assert membership_auc(rec.membership_scores, truth)["mia_auc"] >= 0.8


def test_hidden_columns_filled_from_prev_in_adaptive_mode(round_view):
    view, truth = round_view
    hidden = toy.hide_columns(view, 0.5)
    naive = MembershipInference(MIAParams(mode="naive")).reconstruct(hidden)
    adaptive = MembershipInference(MIAParams(mode="adaptive")).reconstruct(hidden)
    assert membership_auc(adaptive.membership_scores, truth)["mia_auc"] >= membership_auc(naive.membership_scores, truth)["mia_auc"]
    d_adaptive = visible_deltas(hidden, adaptive=True)
    name = next(iter(d_adaptive))
    f, p = view.modules[name], view.prev[name]
    mask = hidden.modules[name].A_hidden
    A_expect = torch.where(mask, p.A, f.A)
    torch.testing.assert_close(d_adaptive[name], f.scale * (f.B @ A_expect) - p.scale * (p.B @ p.A))


def test_weights_are_restored_exactly(round_view):
    view, _ = round_view
    before = {n: t.clone() for n, t in view.model.state_dict().items()}
    with applied(view.model, visible_deltas(view, adaptive=True)):
        changed = any(not torch.equal(before[n], t) for n, t in view.model.state_dict().items())
    assert changed
    assert all(torch.equal(before[n], t) for n, t in view.model.state_dict().items())


def test_no_plaintext_scores_the_public_model_and_no_candidates_gives_a_note(round_view):
    view, _ = round_view
    rec = MembershipInference(MIAParams(score="loss")).reconstruct(replace(view, modules={}))
    assert len(rec.membership_scores) == len(view.candidates) and "public" in rec.note
    assert MembershipInference().reconstruct(replace(view, candidates=None)).membership_scores is None


def test_all_token_scoring_and_param_checks(round_view):
    view, _ = round_view
    rec = MembershipInference(MIAParams(score="loss", tokens="all")).reconstruct(view)
    assert len(rec.membership_scores) == len(view.candidates)
    assert all(math.isfinite(x) for x in rec.membership_scores)
    with pytest.raises(ValueError):
        MIAParams(score="vibes")
    with pytest.raises(ValueError):
        MIAParams(tokens="some")
