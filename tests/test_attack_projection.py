"""The start projection: an adaptive span attack against a start the server knows only as a space.

Synthetic views check the algebra (the start vanishes, the update's span is the batch's, too little
room abstains); a tiny Llama checks that DAGER reconstructs through it with hidden and secretly
permuted columns; a MaskCrypt round checks that the start space its server derives holds the start.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import toy

from attacks.dager import DAGER, DAGERParams
from attacks.toolkit.projection import complement, project_a, projected_span, recover_order
from benchmark.contract import Abstain, AttackerView, LoRAFactors, ObservedModule, StartSpace

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/attack_fixtures.py

T = "Tweet: {text}\nSentiment:"
TEXTS = ["i really love the new phone it works great", "the weather today is awful and cold"]


def synthetic(n=48, r=12, d=16, tokens=5, free=(0, 1), seed=0):
    """A round-2 SGD upload A_start + dA with A_start's rows in span(S) + the ``free`` columns and
    dA's rows in span(X), as the server would see it with S from its broadcast."""
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(d, n, generator=g, dtype=torch.float64)
    start = torch.randn(r, d, generator=g, dtype=torch.float64) @ S
    start[:, list(free)] = torch.randn(r, len(free), generator=g, dtype=torch.float64)  # unknown start there
    X = torch.randn(tokens, n, generator=g, dtype=torch.float64)
    dA = 1e-3 * torch.randn(r, tokens, generator=g, dtype=torch.float64) @ X
    om = ObservedModule(A=start + dA, B=torch.zeros(4, r, dtype=torch.float64), scale=1.0)
    view = AttackerView(defense="toy", kind="sgd", modules={"m": om}, start_known="estimate",
                        start_space={"m": StartSpace(S, tuple(free))})
    return view, om, start, dA, X


def subspace_gap(P: torch.Tensor, Q: torch.Tensor) -> float:
    """Largest sine of a principal angle between the row spaces of P and Q (0: the same space)."""
    bp = torch.linalg.svd(P, full_matrices=False)[2][: torch.linalg.matrix_rank(P, rtol=1e-6)]
    bq = torch.linalg.svd(Q, full_matrices=False)[2][: torch.linalg.matrix_rank(Q, rtol=1e-6)]
    if bp.shape[0] != bq.shape[0]:
        return 1.0
    return float(torch.linalg.svdvals(bq - (bq @ bp.T) @ bp).max())


def test_projection_removes_a_random_start_exactly():
    view, om, start, dA, X = synthetic()
    p = project_a(view, "m", om)
    assert p is not None and p.matrix.shape[1] == 48 - 2 - 16
    removed = start @ p.proj.T  # the start as the projection sees it
    assert float(removed.norm()) <= 1e-8 * float(start.norm())
    assert float((p.matrix - dA @ p.proj.T).norm()) <= 1e-8 * float(dA.norm())
    # the projected update spans exactly the projected batch inputs: DAGER's check holds
    assert subspace_gap(p.matrix, X @ p.proj.T) <= 1e-8
    # subtracting an estimate (the start with its free columns zeroed) does not get there
    estimate = start.clone()
    estimate[:, [0, 1]] = 0
    assert torch.linalg.matrix_rank(om.A - estimate) > X.shape[0]


def test_projected_span_separates_members_and_abstains_without_room():
    view, om, _, _, X = synthetic()
    span = projected_span(view, "m", om, rank_tol=1e-7)
    assert span.rank == X.shape[0] and not span.saturated
    others = torch.randn(200, 48, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert float(span.distance(X).max()) < 1e-6 < 0.3 < float(span.distance(others).min())
    tight, om2, *_ = synthetic(n=30, d=20, tokens=5)  # 30 - 2 - 20 = 8 directions left: no room
    with pytest.raises(Abstain, match="no token can be singled out"):
        projected_span(tight, "m", om2, rank_tol=1e-7)


def test_b_path_projection_where_the_column_space_is_bounded():
    """dL/dB's rows lie in span{A x_t}; left-multiplying B_obs by the complement of the start's column
    space (plus rows with an unknown start) removes B_start and keeps that."""
    g = torch.Generator().manual_seed(4)
    m, n, r, d, tokens = 40, 24, 12, 10, 4
    A = torch.randn(r, n, generator=g, dtype=torch.float64)
    C = torch.randn(m, d, generator=g, dtype=torch.float64)  # the start's column space
    start = C @ torch.randn(d, r, generator=g, dtype=torch.float64)
    start[[3, 7]] = torch.randn(2, r, generator=g, dtype=torch.float64)  # rows with an unknown start
    X = torch.randn(tokens, n, generator=g, dtype=torch.float64)
    dB = 1e-3 * torch.randn(m, tokens, generator=g, dtype=torch.float64) @ (X @ A.T)
    om = ObservedModule(A=None, B=start + dB, scale=1.0)
    view = AttackerView(defense="toy", kind="sgd", modules={"m": om}, start_known="estimate",
                        prev={"m": LoRAFactors(A, start, 1.0)},
                        start_space={"m": StartSpace(torch.zeros(1, n), b_cols=C, b_free=(3, 7))})
    span = projected_span(view, "m", om, rank_tol=1e-7)
    assert span.path == "B" and span.rank == tokens
    others = torch.randn(100, n, generator=g, dtype=torch.float64)
    assert float(span.distance(X).max()) < 1e-6 < 0.1 < float(span.distance(others).min())
    view = replace(view, start_space={"m": StartSpace(torch.zeros(1, n))})  # no bound on the columns
    assert projected_span(view, "m", om, rank_tol=1e-7) is None


def test_recover_order_needs_a_clear_unique_match():
    g = torch.Generator().manual_seed(3)
    replay = torch.randn(6, 20, generator=g)
    perm = torch.randperm(20, generator=g)
    assert recover_order(replay[:, perm[:15]], replay) == tuple(perm[:15].tolist())
    assert recover_order(torch.randn(6, 15, generator=g), replay) is None  # nothing matches
    assert recover_order(replay[:, [0, 0, 1]], replay) is None  # two columns claim one


# ---- DAGER on a tiny Llama -------------------------------------------------------------------


def round_two_view(tok, base, d=16, r=32, hide=4, swap=3, seed=0, batch=1):
    """A client's round-2 SGD upload whose start rows lie in a known d-dim space per module, as a
    SHE-LoRA-like server sees it: ``hide`` columns hidden, ``swap`` visible columns permuted among
    themselves by a secret permutation, the start space known in that (permuted) order, and the
    start itself known only as a poor estimate."""
    g = torch.Generator().manual_seed(seed)
    pm = toy.lora_wrap(copy.deepcopy(base), r=r, b_std=0.02)
    spaces = {}
    with torch.no_grad():
        for name, mod in pm.named_modules():
            if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                W = mod.lora_A["default"].weight
                S = torch.randn(d, W.shape[1], generator=g, dtype=torch.float64)
                W.copy_((torch.randn(r, d, generator=g, dtype=torch.float64) @ S / (4 * d)).float())
                spaces[name[len(toy.PEFT_PREFIX):]] = S
    view = toy.client_view(pm, copy.deepcopy(base), tok, TEXTS[:batch], T, kind="sgd", steps=1, lr=0.05)
    modules, space, prev = {}, {}, {}
    for name, om in view.modules.items():
        n = om.A.shape[1]
        cols = torch.randperm(n, generator=g)
        hidden, moved = cols[:hide], cols[hide:hide + swap]
        sigma = torch.arange(n)
        sigma[moved] = moved[torch.roll(torch.arange(swap), 1)]  # a cycle: every moved column displaced
        mask = torch.zeros_like(om.A, dtype=torch.bool)
        mask[:, hidden] = True
        A = om.A[:, sigma].masked_fill(mask, 0.0)
        modules[name] = replace(om, A=A, A_hidden=mask, columns_permuted=True, displaced=swap)
        space[name] = StartSpace(spaces[name][:, sigma].float(), tuple(sorted(hidden.tolist())))
        true = view.prev[name]
        prev[name] = LoRAFactors(0.5 * true.A[:, sigma], true.B, true.scale)  # an estimate, in the view's order
    return replace(view, modules=modules, prev=prev, start_known="estimate", start_space=space, defense="toy")


def prompts(tok, batch):
    return sorted(tok(T.format(text=t), add_special_tokens=False)["input_ids"] for t in TEXTS[:batch])


def recovered_prompts(rec):
    return sorted(ids[:-1] for ids in rec.token_ids or [])


def test_dager_reconstructs_through_the_projection_despite_permuted_columns(tok, base):
    view = round_two_view(tok, base)
    adaptive = DAGER(DAGERParams(mode="adaptive")).reconstruct(view)
    assert adaptive.status == "ok" and "start: projection" in adaptive.note
    assert recovered_prompts(adaptive) == prompts(tok, 1)
    naive = DAGER(DAGERParams(mode="naive")).reconstruct(view)  # subtracts the poor estimate
    assert recovered_prompts(naive) != prompts(tok, 1) and "start: subtraction" in naive.note


def test_dager_abstains_when_the_start_space_leaves_no_room(tok, base):
    view = round_two_view(tok, base, d=52)  # 64 - 4 hidden - 52 = 8 directions left
    rec = DAGER(DAGERParams(mode="adaptive")).reconstruct(view)
    assert rec.status == "abstained" and "projection" in rec.note


# ---- the start space a MaskCrypt server derives ------------------------------------------------


def test_maskcrypt_start_lies_in_its_start_space():
    from duo import Duo
    from test_defense_maskcrypt import _fed, _updates

    from benchmark.federation.transcript import wire_copy
    from defenses.maskcrypt import MaskCrypt, MaskCryptParams

    fed = _fed(ranks=(1, 2, 2), budgets=(0.02, 0.05, 0.05))  # n = 16: small ranks leave a complement
    d = Duo(MaskCrypt(MaskCryptParams()))
    d.setup(fed)
    updates = _updates(fed)
    d.negotiate(updates)
    message = d.aggregate([d.protect(u) for u in updates])
    for client in fed.clients:
        start = d.finalize(message, client)
        known = d.server.known_start(wire_copy(message), client)
        assert known.known == "estimate" and known.spaces
        for name, f in start.items():
            space = known.spaces[name]
            assert space.a_free and space.b_free  # something was hidden on both factors
            keep = torch.tensor([j for j in range(f.A.shape[1]) if j not in space.a_free])
            N = complement(space.a_rows.double()[:, keep])
            A = f.A.double()[:, keep]
            assert 0 < N.shape[1] and float((A @ N).norm()) <= 1e-5 * float(A.norm())
            rows = torch.tensor([i for i in range(f.B.shape[0]) if i not in space.b_free])
            Nb = complement(space.b_cols.double()[rows].T)
            B = f.B.double()[rows]
            assert 0 < Nb.shape[1] and float((Nb.T @ B).norm()) <= 1e-5 * float(B.norm())
            assert float((known.factors[name].A - f.A).norm()) > 1e-3 * float(f.A.norm())  # the estimate errs
