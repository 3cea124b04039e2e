"""Scoring on hand-checked pairs: ROUGE after one-to-one matching, token bags, membership AUC/TPR."""

import math

import pytest

from benchmark.running.metrics import (
    match,
    membership_auc,
    private_text,
    score_reconstruction,
    token_set_recall,
)


def test_perfect_reconstruction_in_any_order_scores_one():
    refs = ["the cat sat on the mat", "dogs bark at night"]
    s = score_reconstruction(refs, list(reversed(refs)))
    assert s["rouge1"] == s["rouge2"] == s["rougeL"] == 1.0
    assert s["exact_match"] == 1.0
    assert s["token_recall"] == s["token_precision"] == 1.0


def test_known_partial_pair():
    # reference 3 words, reconstruction 2 of them: P = 1, R = 2/3, F1 = 0.8; one bigram of two matches
    s = score_reconstruction(["the cat sat"], ["the cat"])
    assert s["rouge1"] == pytest.approx(0.8)
    assert s["rouge2"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert s["exact_match"] == 0.0
    assert s["token_recall"] == pytest.approx(2 / 3)
    assert s["token_precision"] == 1.0


def test_unmatched_reference_scores_zero_and_surplus_texts_cost_precision_only():
    refs = ["alpha beta gamma", "delta epsilon"]
    one = score_reconstruction(refs, ["alpha beta gamma"])
    assert one["rouge1"] == pytest.approx(0.5)
    assert one["exact_match"] == pytest.approx(0.5)
    extra = score_reconstruction(refs, ["alpha beta gamma", "delta epsilon", "zeta eta"])
    assert extra["rouge1"] == 1.0
    assert extra["token_precision"] == pytest.approx(5 / 7)


def test_matching_is_one_to_one_and_optimal():
    refs = ["a b c d", "a b x y"]
    texts = ["a b x y", "a b c d"]
    assert sorted(match(refs, texts)) == [(0, 1), (1, 0)]


def test_empty_inputs():
    assert score_reconstruction(["some text"], [])["rouge1"] == 0.0
    assert score_reconstruction([], ["x"])["rouge1"] == 0.0


def test_token_bag_uses_the_tokenizer_when_given():
    class Chars:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text if c != " "]}

    s = score_reconstruction(["abc"], ["cab"], tokenizer=Chars())
    assert s["token_recall"] == s["token_precision"] == 1.0
    assert s["exact_match"] == 0.0


def test_template_is_stripped_from_both_sides():
    t = "Tweet: {text}\nSentiment:"
    same = score_reconstruction(["Tweet: secret words here\nSentiment: negative"], ["secret words here"], template=t)
    assert same["rouge1"] == 1.0
    echo = score_reconstruction(["Tweet: secret words here\nSentiment: negative"], ["Tweet:\nSentiment:"], template=t)
    assert echo["rouge1"] == 0.0


def test_membership_auc_perfect_reversed_and_tied():
    y = [True, True, False, False]
    assert membership_auc([0.9, 0.8, 0.1, 0.2], y) == {"mia_auc": 1.0, "tpr_at_1fpr": 1.0, "tpr_at_5fpr": 1.0}
    assert membership_auc([0.1, 0.2, 0.9, 0.8], y)["mia_auc"] == 0.0
    assert membership_auc([0.5] * 4, y)["mia_auc"] == 0.5


def test_membership_auc_hand_computed():
    # positives 3, 1; negatives 2, 0: pairs (3>2, 3>0, 1<2, 1>0) -> 3/4
    assert membership_auc([3, 1, 2, 0], [True, True, False, False])["mia_auc"] == pytest.approx(0.75)


def test_tpr_at_low_fpr():
    negatives = [i / 100 for i in range(100)]  # 0.00 .. 0.99
    positives = [0.995, 0.985, 0.5, 0.2]
    out = membership_auc(positives + negatives, [True] * 4 + [False] * 100)
    # threshold 0.985 admits one negative (0.99): FPR 1% -> TPR 2/4; 5% admits 0.95.. -> still 2/4
    assert out["tpr_at_1fpr"] == pytest.approx(0.5)
    assert out["tpr_at_5fpr"] == pytest.approx(0.5)


def test_membership_auc_handles_nan_and_length_mismatch():
    out = membership_auc([float("nan"), 1.0], [True, False])
    assert out["mia_auc"] == 0.0 and not math.isnan(out["mia_auc"])
    with pytest.raises(ValueError):
        membership_auc([1.0], [True, False])


def test_private_text_strips_template_and_label_from_both_sides():
    t = "Tweet: {text}\nSentiment:"
    labels = ("negative", "positive")
    assert private_text("Tweet: secret words here\nSentiment: positive", t, labels) == "secret words here"
    assert private_text("Tweet: secret words", t, labels) == "secret words"  # tail truncated away
    assert private_text("Tweet: words positive", t, labels) == "words"  # ... and the label word after it
    assert private_text("secret words", "{text} ->", ()) == "secret words"
    echo = private_text("Tweet:\nSentiment: positive", t, labels)
    assert score_reconstruction(["secret words here"], [echo])["rouge1"] == 0.0


def test_token_set_recall_counts_distinct_ids_once():
    assert token_set_recall([[5, 6, 6, 7]], [[7, 6]]) == pytest.approx(2 / 3)  # a bag with each token once
    assert token_set_recall([[5, 6], [6, 8]], [[8], [5, 6, 9]]) == 1.0
    assert token_set_recall([[5]], []) == 0.0 and token_set_recall([], [[1]]) == 0.0


def test_private_ids_are_the_prompt_ids_without_template_or_label():
    """The truth of a bag of ids: what the model read of the private text, as ids; the template's head
    and tail go (their own ids match even where the head's trailing space merges into the first word)
    and so does the label, while a prompt cut by truncation keeps what was read."""
    from benchmark.federation.data import Example
    from benchmark.federation.models import tiny_tokenizer
    from benchmark.federation.train import TaskSpec, seen_private

    tok = tiny_tokenizer()
    spec = TaskSpec("classification", "decoder", "Tweet: {text}\nSentiment:", ("negative", "positive"), 12)
    short, long = seen_private(tok, spec, [Example("my cat sleeps all day", 1), Example("a " * 40, 0)])[1]
    assert short == tok("my cat sleeps all day", add_special_tokens=False).input_ids
    head = len(tok("Tweet:", add_special_tokens=False).input_ids)
    assert long == tok("a", add_special_tokens=False).input_ids * (spec.prompt_tokens - head)
