"""The span attacks' fast paths compute what the slow ones did, and bad input never reaches LAPACK.

Speed itself is measured in benchmarks (tests/bench, benchmark/asv_bench/attacks.py), never here:
these tests pin down that each shortcut (an early-stopped forward, a forward that skips the blocks
under the hooked ones, the trimmed refit through the smaller of two systems, the running sum of the
label search) gives the answer of the computation it replaces.
"""

from dataclasses import replace

import pytest
import torch
from attack_fixtures import TEXTS, T, make_view

from attacks.dager import DAGER, DAGERParams
from attacks.toolkit import labels
from attacks.toolkit.lorahooks import label_gradients
from attacks.toolkit.probing import FromLayer, capture_inputs, last_logits, vocab_inputs
from attacks.toolkit.subspace import _trimmed_distance, single_thread
from benchmark.contract.progress import reporting, tick

pytestmark = pytest.mark.usefixtures("one_thread")


def _full_forward_inputs(model, modules, ids):
    """Inputs of ``modules`` recorded during one complete forward pass (no early stop)."""
    seen = {}
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.__setitem__(id(mod), args[0].detach())) for m in modules]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [seen[id(m)].float() for m in modules]


def _modules(model, layer):
    return [m for n, m in model.named_modules() if n.endswith((f"layers.{layer}.self_attn.q_proj", f"layers.{layer}.self_attn.v_proj"))]


def test_early_stopped_capture_equals_the_full_forward_capture(tok, base):
    ids = torch.tensor([tok(T.format(text=TEXTS[0]), add_special_tokens=False)["input_ids"]] * 2)
    for layer in (0, 1):
        mods = _modules(base, layer)
        fast = capture_inputs(base, mods, ids)
        full = _full_forward_inputs(base, mods, ids)
        for a, b in zip(fast, full):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_vocabulary_pass_equals_full_forwards_of_single_tokens(tok, base):
    mods = _modules(base, 0)
    got = vocab_inputs(base, mods)
    ids = torch.tensor([[5], [1012], [len(tok) - 1]])
    want = _full_forward_inputs(base, mods, ids)
    for g, w in zip(got, want):
        torch.testing.assert_close(g[ids[:, 0]], w[:, 0], rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def view(tok, base):
    return make_view(tok, base, r=32)  # above the distinct tokens of two tweets: DAGER decodes and labels


def test_forward_from_a_later_block_equals_the_full_forward(tok, view):
    runner = FromLayer(view.model, 2)
    assert runner.resumes
    ids = torch.tensor([tok(T.format(text=t), add_special_tokens=False)["input_ids"][:8] for t in TEXTS])
    torch.testing.assert_close(runner.last_logits(ids), last_logits(view.model, ids), rtol=1e-6, atol=1e-6)
    names = [n for n in view.modules if ".layers.2." in n or ".layers.3." in n]
    factors = {n: view.prev[n] for n in names}
    row = ids[0].tolist()
    fast = label_gradients(view.model, factors, row, [7, 11], runner)
    full = label_gradients(view.model, factors, row, [7, 11])
    for f, g in zip(fast, full):
        for n in names:
            for a, b in zip(f[n], g[n]):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_forward_from_a_later_block_falls_back_where_resuming_is_wrong():
    """GPT-2 adds position embeddings to ``inputs_embeds``: a resumed pass would add them twice, so the
    runner must notice and run whole forwards."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=97, bos_token_id=0,
                                       eos_token_id=0)).eval()
    runner = FromLayer(model, 1)
    assert not runner.resumes
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    torch.testing.assert_close(runner.last_logits(ids), last_logits(model, ids), rtol=0, atol=0)


def test_forward_from_a_later_block_keeps_only_recent_sequences(view):
    runner = FromLayer(view.model, 1, keep=2)
    for k in range(5):
        runner.hidden(torch.tensor([[k + 1, k + 2, k + 3]]))
    assert len(runner._store) == 2


def _dense_trimmed_distance(F, R, trim, iters=5):
    """The refit as first written: one k x k normal matrix per row (the slow reference)."""
    Fn = F / F.norm(dim=1, keepdim=True).clamp_min(1e-30)
    res = Fn - (Fn @ R) @ R.T
    for _ in range(iters):
        worst = torch.topk(res.abs(), trim, dim=1).indices
        mask = torch.ones_like(Fn).scatter_(1, worst, 0.0)
        RtR = torch.einsum("ck,nc,cj->nkj", R, mask, R) + 1e-10 * torch.eye(R.shape[1], dtype=R.dtype)
        with single_thread():
            coef = torch.linalg.solve(RtR, ((Fn * mask) @ R).unsqueeze(-1)).squeeze(-1)
        res = Fn - coef @ R.T
    return (res * mask).norm(dim=1) / (Fn * mask).norm(dim=1).clamp_min(1e-30)


def _planted(c, k, n, displaced, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = torch.linalg.qr(torch.randn(c, k, generator=g, dtype=torch.float64))[0]
    members = torch.randn(n, k, generator=g, dtype=torch.float64) @ R.T
    members[:, :displaced] += torch.randn(n, displaced, generator=g, dtype=torch.float64)
    return R, torch.cat([members, torch.randn(n, c, generator=g, dtype=torch.float64)])


@pytest.mark.parametrize("c,k,trim", [(48, 8, 5), (48, 12, 30), (96, 40, 12)])  # trim < k and trim > k
def test_trimmed_distance_equals_the_dense_refit(c, k, trim):
    R, F = _planted(c, k, 20, displaced=min(trim, 4))
    got = _trimmed_distance(F, R, trim, chunk=7)
    torch.testing.assert_close(got, _dense_trimmed_distance(F, R, trim), rtol=1e-6, atol=1e-8)
    assert float(got[:20].median()) < 1e-6 < float(got[20:].min())  # displaced members pass, random rows do not


@pytest.mark.parametrize("c,k,trim", [(200, 160, 30), (400, 150, 170)])  # a t x t and a k x k system
def test_trimmed_distance_runs_multithreaded_where_batched_lu_fails(c, k, trim):
    """MKL's batched LU fails with several threads from size ~150 ("Parameter 6 was incorrect on
    entry to DLASWP"); the refit must give the same finite answer whatever the caller's thread count."""
    R, F = _planted(c, k, 6, displaced=3)
    one = _trimmed_distance(F, R, trim)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = _trimmed_distance(F, R, trim)
    finally:
        torch.set_num_threads(before)
    assert torch.isfinite(two).all()
    torch.testing.assert_close(one, two, rtol=1e-9, atol=1e-12)
    assert float(two[:6].median()) < 1e-6 < float(two[6:].min())


def test_trimmed_distance_refuses_input_no_fit_can_use():
    R, F = _planted(48, 8, 4, displaced=2)
    bad = F.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        _trimmed_distance(bad, R, 5)
    with pytest.raises(ValueError, match="must lie in"):
        _trimmed_distance(F, R, 40)  # 48 - 40 coordinates cannot pin down 8 directions
    with pytest.raises(ValueError, match="do not match"):
        _trimmed_distance(F[:, :10], R, 5)
    zero = torch.cat([torch.zeros(1, 48, dtype=torch.float64), F])
    assert float(_trimmed_distance(zero, R, 5)[0]) == 1.0  # a zero row (padding) is never a member


def test_label_search_finds_a_planted_combination():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 4):
        cands = labels._Candidates(n, torch.zeros(50))
        pick = [int(torch.randint(0, 5, (1,), generator=g)) for _ in range(n)]
        blocks = [torch.randn(5, 50, generator=g) for _ in range(n)]
        cands.target = sum(b[p] for b, p in zip(blocks, pick))
        for i, b in enumerate(blocks):
            cands.add(i, b[:2])  # in two blocks, as the search adds them
            cands.add(i, b[2:])
        choice, cos = labels._best_combination(cands)
        assert cos > 0.9999
        assert choice == pick


def test_ticks_reach_the_reporter_only_inside_reporting(tok, view):
    tick("outside")  # no reporter: a no-op
    seen = []
    with reporting(seen.append, every_s=0.0):
        rec = DAGER(DAGERParams()).reconstruct(view)
        with reporting(lambda m: None):
            tick("nested")
    assert rec.status == "ok"
    assert any(m.startswith("vocabulary pass") for m in seen)
    assert any(m.startswith("scoring extensions") for m in seen)
    assert any(m.startswith("label candidates") for m in seen)
    assert not any("nested" in m or "outside" in m for m in seen)


def test_reporting_shows_totals_and_throttles():
    seen = []
    with reporting(seen.append, every_s=3600.0):
        tick("labels", 1, 4)
        tick("labels", 2, 4)  # throttled
        tick("decoding")  # a new stage shows at once
    assert seen == ["labels 1/4", "decoding 1"]


def test_label_gradients_through_the_head_equal_one_backward_per_label(view, monkeypatch):
    """The cotangents formed at the head's input (one batched backward) give each label's gradient of
    -log p(label), as a separate backward from the log-probabilities does."""
    from attacks.toolkit import lorahooks

    names = [n for n in view.modules if ".layers.2." in n or ".layers.3." in n]
    row, labels = [101, 2023, 2003, 1037, 3231], [7, 11, 2023, 500]
    head = lorahooks._through_head
    for factors in ({n: view.prev[n] for n in names},  # a later round's start, and round 1's B = 0
                    {n: replace(view.prev[n], B=torch.zeros_like(view.prev[n].B)) for n in names}):
        used = []
        monkeypatch.setattr(lorahooks, "_through_head", lambda *a, used=used: used.append(head(*a)) or used[-1])
        fast = label_gradients(view.model, factors, row, labels, chunk=3)
        assert used and used[0] is not None  # the batched path applied
        monkeypatch.setattr(lorahooks, "_through_head", lambda *a: None)
        slow = label_gradients(view.model, factors, row, labels)
        for f, g in zip(fast, slow):
            for n in names:
                for a, b in zip(f[n], g[n]):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
        assert not torch.allclose(fast[0][names[-1]][1], fast[1][names[-1]][1])  # labels differ


def test_extensions_side_by_side_equal_their_own_forwards(tok, base, monkeypatch):
    """Prefixes with different numbers of candidate extensions, over several passes (small chunk):
    each candidate's layer-1 input is the one its own forward pass gives. A model that ignored the
    isolating mask (candidates seeing each other) is caught and sent down the plain path."""
    from attacks.toolkit import probing

    mods = _modules(base, 1)
    g = torch.Generator().manual_seed(1)
    prefixes = torch.randint(0, len(tok), (3, 6), generator=g)
    counts = [5, 1, 9]
    seqs = torch.cat([torch.cat([prefixes[i].repeat(c, 1), torch.randint(0, len(tok), (c, 1), generator=g)], 1)
                      for i, c in enumerate(counts)])
    seqs = seqs[torch.randperm(len(seqs), generator=g)]
    alone = [torch.cat([capture_inputs(base, mods, seqs[i : i + 1])[j][:, -1] for i in range(len(seqs))]) for j in range(2)]
    side = probing._cached_last_inputs(base, mods, seqs, chunk=10)
    for a, b in zip(side, alone):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(probing, "_isolating_mask", lambda rows, width, length, dtype: torch.zeros(rows, 1, width, length + width))
    assert probing._cached_last_inputs(base, mods, seqs) is None
    for a, b in zip(probing.last_position_inputs(base, mods, seqs), alone):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_flattened_batches_equal_each_example_flattened(view):
    """All candidates' gradients flattened in one copy, over a partial mask (adaptive mode's hidden
    coordinates), equal each candidate's own ``flatten_grads`` stacked."""
    from attacks.toolkit.lorahooks import flatten_batches, flatten_grads, label_gradient_batches

    names = [n for n in view.modules if ".layers.3." in n]
    factors = {n: view.prev[n] for n in names}
    g = torch.Generator().manual_seed(0)
    masks = {n: (torch.rand(view.prev[n].A.shape, generator=g) > 0.3, torch.ones_like(view.prev[n].B, dtype=torch.bool))
             for n in names}
    batches = label_gradient_batches(view.model, factors, [101, 2023, 2003], [7, 11, 13])
    each = torch.stack([flatten_grads({n: (a[k], b[k]) for n, (a, b) in batches.items()}, masks) for k in range(3)])
    assert torch.equal(flatten_batches(batches, masks), each)
