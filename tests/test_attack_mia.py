"""Membership inference against the client model rebuilt from a round upload (tiny random Llama)."""

import copy
import math
from dataclasses import replace

import pytest
import torch
import toy

from attacks.mia import SCORES, MembershipInference, MIAParams, applied, primary_score, visible_deltas
from benchmark.contract import AttackerView, LoRAFactors, ObservedModule
from benchmark.federation.sampling import reserve_holdout
from benchmark.running.metrics import membership_auc, membership_row

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/attack_fixtures.py

T = "Tweet: {text}\nSentiment:"
MEMBERS = ["my cat sleeps all day long", "coffee at dawn is the best", "rain again on my birthday",
           "new shoes hurt my feet", "the bus was late twice", "pizza night with friends",
           "lost my keys at the gym", "sunny walk by the river"]
OTHERS = ["stocks fell sharply this morning", "the museum opens at nine", "he plays violin badly",
          "traffic jams every friday", "my laptop battery died", "snow covered the hills",
          "the soup was too salty", "kids built a sand castle"]


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


def test_one_pass_gives_every_score_and_they_separate_members(round_view):
    view, truth = round_view
    rec = MembershipInference(MIAParams(score="loss")).reconstruct(view)
    assert set(rec.membership_scores_by) == set(SCORES)
    assert rec.membership_scores == rec.membership_scores_by["loss"]
    for score, values in rec.membership_scores_by.items():
        assert len(values) == len(view.candidates)
        assert all(math.isfinite(x) for x in values)
        if score != "zlib":  # zlib calibrates by compressibility, which a random-init model does not model
            assert membership_auc(values, truth)["mia_auc"] >= 0.8, score
    row = membership_row(rec.membership_scores, rec.membership_scores_by, truth, n_boot=200)
    assert row["n_members"] == row["n_nonmembers"] == len(MEMBERS)
    assert row["mia_auc"] == row["mia_loss_auc"] and row["mia_auc_lo"] <= row["mia_auc"] <= row["mia_auc_hi"]
    assert row["mia_ref_auc"] >= 0.8 and "mia_mink_tpr_at_1fpr_hi" in row


def test_batching_does_not_change_scores_or_their_order(round_view):
    view, _ = round_view
    one = MembershipInference(MIAParams(batch_size=1, tokens="all")).reconstruct(view).membership_scores_by
    many = MembershipInference(MIAParams(batch_size=5, tokens="all")).reconstruct(view).membership_scores_by
    for score in SCORES:
        assert many[score] == pytest.approx(one[score], rel=1e-4, abs=1e-5), score
    label = [MembershipInference(MIAParams(batch_size=b, tokens="label")).reconstruct(view).membership_scores_by["loss"]
             for b in (1, 5)]
    assert label[1] == pytest.approx(label[0], rel=1e-4, abs=1e-5)
    # all-token Min-K% differs from LOSS (it keeps the lowest fifth of the tokens)
    assert any(abs(a - b) > 1e-3 for a, b in zip(one["mink"], one["loss"]))


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


def test_holdout_is_taken_out_of_the_target_shard_only():
    shards = [list(range(0, 10)), list(range(10, 30)), list(range(30, 33))]
    before = [list(s) for s in shards]
    held = reserve_holdout(shards, 1, 6, seed=4)
    assert len(held) == 6 and set(held) <= set(before[1])
    assert sorted(shards[1] + held) == before[1] and not set(held) & set(shards[1])
    assert shards[0] == before[0] and shards[2] == before[2]
    assert reserve_holdout([list(range(5))], 0, 100, seed=0) == reserve_holdout([list(range(5))], 0, 100, seed=0)
    assert len(reserve_holdout([list(range(5))], 0, 100, seed=0)) == 2  # at most half the shard


def test_label_only_confidence_matches_the_full_logits(round_view):
    view, _ = round_view
    bare = replace(view, modules={})  # no update: the scores are the public model's own
    got = MembershipInference(MIAParams(tokens="label", batch_size=4)).reconstruct(bare).membership_scores_by["loss"]
    for text, score in zip(view.candidates[:3], got):
        ids = view.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = view.model(input_ids=ids).logits[0, -1].float()
        assert score == pytest.approx(float(torch.log_softmax(logits, -1).max()), abs=1e-5)


def test_auto_scores_against_a_trained_start_by_reference_and_otherwise_by_loss(round_view):
    """``auto`` is a rule on the view, not on the result: the fixture's start carries a non-zero B (a later
    round: the public model holds a trained global delta), so the reference score is primary; a start
    whose B is zero (round 1 with the server's init) or no known start leaves the public model the bare
    base, and LOSS is primary. An explicit choice is kept whatever the start. The row gets the choice."""
    view, _ = round_view
    assert MIAParams().score == "auto"
    later = MembershipInference(MIAParams()).reconstruct(view)
    assert later.extra["mia_primary"] == "ref" and later.membership_scores == later.membership_scores_by["ref"]
    assert "primary score: ref (auto" in later.note
    fresh = {n: LoRAFactors(f.A, torch.zeros_like(f.B), f.scale) for n, f in view.prev.items()}
    for prev in (fresh, None):
        first = replace(view, prev=prev)
        assert primary_score("auto", first)[0] == "loss"
        rec = MembershipInference(MIAParams()).reconstruct(first)
        assert rec.extra["mia_primary"] == "loss" and rec.membership_scores == rec.membership_scores_by["loss"]
    for score in SCORES:
        rec = MembershipInference(MIAParams(score=score)).reconstruct(replace(view, prev=fresh))
        assert rec.extra["mia_primary"] == score and rec.membership_scores == rec.membership_scores_by[score]


def test_a_long_prompt_is_read_where_training_put_its_label(round_view):
    """Training cuts a prompt at ``TaskSpec.prompt_tokens`` and puts the label right after the cut; the
    view carries that number and the attack reads the model there, not after the whole text (where a
    long member's label was never trained). Checked against the harness's own ``encode``."""
    from benchmark.federation.data import Example
    from benchmark.federation.train import TaskSpec, encode

    view, _ = round_view
    tok = view.tokenizer
    spec = TaskSpec("classification", "decoder", T, ("negative", "positive"), seq_len=8)
    text = MEMBERS[0] + " " + OTHERS[0]  # its prompt runs well past 7 tokens
    row = encode(tok, spec, [Example(text, 1)])
    at = int((row["labels"][0] != -100).nonzero()[0])  # where the label sits in the training row
    assert at == spec.prompt_tokens == 7 < len(tok(spec.prompt(Example(text)), add_special_tokens=False).input_ids)
    with torch.no_grad():
        logits = view.model(input_ids=row["input_ids"][:, :at]).logits[0, -1].float()
    trained_position = float(torch.log_softmax(logits, -1).max())
    bare = replace(view, modules={}, candidates=[spec.prompt(Example(text))])
    cut = MembershipInference(MIAParams(score="loss")).reconstruct(replace(bare, prompt_tokens=spec.prompt_tokens))
    whole = MembershipInference(MIAParams(score="loss")).reconstruct(bare)
    assert cut.membership_scores[0] == pytest.approx(trained_position, abs=1e-5)
    assert whole.membership_scores[0] != pytest.approx(trained_position, abs=1e-3)


def test_labelled_candidates_are_scored_by_their_own_label(round_view):
    """With labels (Yeom's LOSS on the (text, label) record) each score is the log-probability of the
    candidate's label word after the prompt; members scored with the label they trained on rank above
    the same members scored with the other label, which confidence alone cannot tell apart."""
    view, truth = round_view
    vocab = [view.tokenizer(w, add_special_tokens=False).input_ids[0] for w in (" positive", " negative")]
    labels = [i % 2 for i in range(len(view.candidates))]  # members trained " positive", " negative", ...
    labelled = replace(view, candidate_labels=labels, label_token_ids=vocab)
    attack = MembershipInference(MIAParams(score="loss", batch_size=4))
    got = attack.reconstruct(labelled).membership_scores
    flipped = attack.reconstruct(replace(labelled, candidate_labels=[1 - y for y in labels])).membership_scores
    with applied(view.model, visible_deltas(view, False)):
        for text, y, score in zip(view.candidates[:3], labels, got):
            ids = view.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            with torch.no_grad():
                logits = view.model(input_ids=ids).logits[0, -1].float()
            assert score == pytest.approx(float(torch.log_softmax(logits, -1)[vocab[y]]), abs=1e-5)
    members = [i for i, m in enumerate(truth) if m]
    assert all(got[i] > flipped[i] for i in members)
    confidence = attack.reconstruct(view).membership_scores
    assert all(c >= g - 1e-6 for c, g in zip(confidence, got))  # the top prediction bounds any label's
