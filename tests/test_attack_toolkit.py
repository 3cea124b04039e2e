"""The shared attack toolkit: gradient hooks agree with peft, rank estimates, gap splits, templates."""

import copy

import pytest
import torch
import torch.nn.functional as F
import toy

from attacks.toolkit.lmprior import PrefixPrior
from attacks.toolkit.lorahooks import attached, label_gradients, observed_target, per_example_grads
from attacks.toolkit.probing import _cached_last_inputs, capture_inputs, last_position_inputs
from attacks.toolkit.subspace import estimate_rank, split_by_gap
from attacks.toolkit.textutil import extract_text, harness_ids, template_ids

T = "Tweet: {text}\nSentiment:"


@pytest.fixture(scope="module")
def tok():
    return toy.minilm_tokenizer()


@pytest.fixture(scope="module")
def setup(tok):
    torch.set_num_threads(1)
    base = toy.tiny_llama(len(tok), layers=3)
    pm = toy.lora_wrap(copy.deepcopy(base), r=8)
    view = toy.client_view(pm, copy.deepcopy(base), tok, ["good news today"], T)
    return base, view


def test_attached_hooks_reproduce_the_peft_gradient(tok, setup):
    _, view = setup
    batch = toy.encode(tok, ["good news today"], T)
    names = list(view.modules)
    with attached(view.model, {n: view.prev[n] for n in names}) as leaves:
        loss = view.model(**batch).loss
        grads = torch.autograd.grad(loss, [t for n in names for t in leaves[n]])
    for i, n in enumerate(names):
        torch.testing.assert_close(grads[2 * i], view.modules[n].A, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(grads[2 * i + 1], view.modules[n].B, rtol=1e-4, atol=1e-7)


def test_per_example_grads_sum_to_the_batch_gradient(tok, setup):
    base, _ = setup
    pm = toy.lora_wrap(copy.deepcopy(base), r=8)
    texts = ["good news today", "bad day at work"]
    view = toy.client_view(pm, copy.deepcopy(base), tok, texts, T)
    rows = [tok(T.format(text=t), add_special_tokens=False)["input_ids"] for t in texts]
    label = tok(" positive", add_special_tokens=False)["input_ids"][0]
    names = list(view.modules)
    total = {n: [0, 0] for n in names}
    for row in rows:  # different lengths: one pass each
        per = per_example_grads(view.model, {n: view.prev[n] for n in names}, torch.tensor([row]),
                                lambda lg: F.cross_entropy(lg[:, -1], torch.tensor([label]), reduction="none"))
        for n in names:
            total[n][0] = total[n][0] + per[n][0][0] / len(rows)
            total[n][1] = total[n][1] + per[n][1][0] / len(rows)
    for n in names:
        torch.testing.assert_close(total[n][0], view.modules[n].A, rtol=1e-3, atol=1e-7)
        torch.testing.assert_close(total[n][1], view.modules[n].B, rtol=1e-3, atol=1e-7)


def test_observed_target_turns_sgd_deltas_into_gradient_directions(tok, setup):
    base, _ = setup
    pm = toy.lora_wrap(copy.deepcopy(base), r=8)
    g = toy.client_view(pm, copy.deepcopy(base), tok, ["good news today"], T)
    d = toy.client_view(pm, copy.deepcopy(base), tok, ["good news today"], T, kind="sgd", steps=1, lr=0.1)
    names = list(g.modules)
    tg, _ = observed_target(g, names, adaptive=True)
    td, _ = observed_target(d, names, adaptive=True)
    assert float(F.cosine_similarity(tg, td, dim=0)) > 0.999


def test_estimate_rank():
    s = torch.tensor([1.0, 0.3, 1e-2, 1e-5, 1e-9, 1e-9])
    assert estimate_rank(s) == (4, False)
    flat = torch.linspace(1.0, 0.5, 8)
    assert estimate_rank(flat) == (8, True)
    assert estimate_rank(torch.zeros(3)) == (0, False)


def test_split_by_gap():
    d = torch.tensor([0.9, 1e-4, 0.8, 3e-3, 0.7, 2e-4])
    assert sorted(split_by_gap(d, tau=1e-3).tolist()) == [1, 3, 5]  # gap beats the fixed threshold
    assert split_by_gap(torch.tensor([0.5, 0.6, 0.7]), tau=1e-3).numel() == 0


def test_template_ids_and_text_extraction(tok):
    t = template_ids(tok, T)
    assert t.lead == (101,) and t.trail == (102,)
    dec = harness_ids(tok, T, decoder=True)
    assert dec.lead == () and dec.start == list(t.prefix)
    ids = tok(T.format(text="hello world") + " positive", add_special_tokens=False)["input_ids"]
    assert extract_text(ids, dec, tok) == "hello world"
    enc = harness_ids(tok, T, decoder=False)
    assert enc.prefix == () and enc.lead == (101,)


def test_label_gradients_match_the_client_gradient_for_the_true_label(tok, setup):
    _, view = setup
    row = tok(T.format(text="good news today"), add_special_tokens=False)["input_ids"]
    label = tok(" positive", add_special_tokens=False)["input_ids"][0]
    names = list(view.modules)
    per = label_gradients(view.model, {n: view.prev[n] for n in names}, row, [label, label + 1])
    for n in names:
        for got, want in zip(per[0][n], (view.modules[n].A, view.modules[n].B)):  # float32 rounding, relative to the scale
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))
    assert not torch.allclose(per[1][names[-1]][1], view.modules[names[-1]].B)


def test_cached_extension_inputs_equal_full_forwards(tok, setup):
    """Scoring one-token extensions through each prefix's key/value cache gives the same layer-1
    inputs as running every extended sequence whole (and a bug in the cache path would not)."""
    base, _ = setup
    mods = [m for n, m in base.named_modules() if n.endswith("layers.1.self_attn.q_proj") or n.endswith("layers.1.self_attn.v_proj")]
    g = torch.Generator().manual_seed(0)
    prefixes = torch.randint(0, len(tok), (3, 7), generator=g)
    nxt = torch.randint(0, len(tok), (20,), generator=g)
    seqs = torch.cat([prefixes.repeat_interleave(20, 0), nxt.repeat(3).unsqueeze(1)], 1)
    cached = _cached_last_inputs(base, mods, seqs)
    assert cached is not None
    full = [torch.cat([capture_inputs(base, mods, seqs[i : i + 1])[j][:, -1] for i in range(len(seqs))]) for j in range(len(mods))]
    for a, b in zip(cached, full):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    shuffled = seqs[torch.randperm(len(seqs), generator=g)]  # rows of many prefixes, in any order
    again = last_position_inputs(base, mods, shuffled)
    plain = [torch.cat([capture_inputs(base, mods, shuffled[i : i + 1])[j][:, -1] for i in range(len(shuffled))]) for j in range(len(mods))]
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(again, plain))


def test_prefix_prior_matches_full_forwards(tok, setup):
    base, _ = setup
    prior = PrefixPrior(base)
    hyps = [[5, 9, 11], [5, 9, 12]]
    for step in range(4):
        got = prior.log_probs(hyps)
        want = F.log_softmax(base(input_ids=torch.tensor(hyps)).logits[:, -1].float(), -1)
        assert torch.allclose(got, want, atol=1e-4), step
        hyps = [h + [int(torch.argmax(got[i]))] for i, h in enumerate(hyps)]
    assert len(prior._store) > 0 and all(len(k) >= 3 for k in prior._store)


def test_a_clean_span_bag_ends_at_its_step_not_at_a_lenient_threshold():
    """SmolLM2's r256 batch-2 case: 45 batch tokens at 7e-5..5e-3, then a cluster of untrained tokens at
    0.016-0.019, all under the original's 0.05. With ``least`` (a clean span) the bag stops at the step;
    without it, or when no step of CLEAN_GAP exists past ``least``, the threshold decides."""
    from attacks.toolkit.decoding import select_tokens

    g = torch.Generator().manual_seed(0)
    members = torch.logspace(-4.2, -2.3, 45)
    junk = 0.016 + 0.003 * torch.rand(300, generator=g)
    rest = 0.5 + 0.5 * torch.rand(2000, generator=g)
    d = torch.cat([members, junk, rest])[torch.randperm(2345, generator=g)]
    truth = set(torch.nonzero(d < 0.01).flatten().tolist())
    assert set(select_tokens(d, 0.05, cap=130, least=30).tolist()) == truth
    assert len(select_tokens(d, 0.05, cap=130)) == 130  # lenient threshold: junk fills the cap
    smooth = torch.logspace(-4.0, -1.5, 120)  # no step anywhere: nothing to cut at
    assert len(select_tokens(smooth, 0.05, cap=130, least=30)) == int((smooth < 0.05).sum())
    assert set(select_tokens(d, 0.05, cap=40, least=30).tolist()) < truth  # the cap still bounds it


def test_a_clean_bag_never_cuts_between_exact_members():
    """tiny's round-1 probe (B path, batch 1): a decoder's first token lies in v_proj's span only (a
    query at position 0 gets no gradient), ~4e-7 from the check, its other tokens in q_proj's too,
    ~1e-7. The ratio 3 between those float32 rounding levels is no step: all 7 are members, and the
    cut comes at the step to the non-members (0.17 on)."""
    from attacks.toolkit.decoding import select_tokens

    g = torch.Generator().manual_seed(0)
    members = torch.tensor([5.5e-8, 6.4e-8, 9.1e-8, 1.07e-7, 1.09e-7, 1.31e-7, 4.03e-7])
    rest = 0.17 + 0.8 * torch.rand(3000, generator=g)
    d = torch.cat([rest[:100], members, rest[100:]])
    assert sorted(select_tokens(d, 0.05, cap=22, least=3).tolist()) == list(range(100, 107))
