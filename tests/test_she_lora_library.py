"""she_lora library pieces: sensitivity, OPE, ordered negotiation, column swap, layouts, server lift."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from she_lora import ckks
from she_lora.layout import client_blocks, client_lift_order, server_lift_groups
from she_lora.lift import ServerLift, decode_lift, pack_blocks, rotation_steps
from she_lora.negotiation import TopK, merge_global_list
from she_lora.ope import KeyedOPE
from she_lora.permutation import ColumnLayout
from she_lora.reparam import fuse, plain_aggregate
from she_lora.sensitivity import budget_columns, column_sensitivity, top_columns


def test_sensitivity_is_abs_inside_the_sum() -> None:
    A = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 2.0, 0.5]])
    sq = torch.tensor([4.0, 1.0, 0.0])
    np.testing.assert_allclose(column_sensitivity(A, sq), [2.0 * 2.0, 4.0 * 1.0, 0.0])
    with pytest.raises(ValueError, match="input_sq_norms has shape"):
        column_sensitivity(A, torch.ones(4))


def test_budget_columns_and_ties() -> None:
    assert budget_columns(0.00125, 3200) == 4
    assert budget_columns(0.016, 3200) == 52
    assert budget_columns(0.0, 10) == 0 and budget_columns(1.0, 10) == 10
    with pytest.raises(ValueError, match=r"budget must be in \[0, 1\]"):
        budget_columns(1.5, 10)
    assert top_columns(np.array([1.0, 3.0, 3.0, 2.0]), 3) == [1, 2, 3]


def test_ope_preserves_order_and_needs_the_key() -> None:
    ope = KeyedOPE(b"k" * 32, 500, "layer.q")
    codes = ope.encode(range(500))
    assert codes == sorted(codes) and len(set(codes)) == 500
    assert ope.decode(ope.encode([7, 3, 499])) == [7, 3, 499]
    assert KeyedOPE(b"k" * 32, 500, "layer.q").encode([42]) == ope.encode([42])  # deterministic across clients
    other = KeyedOPE(b"x" * 32, 500, "layer.q")
    assert other.encode([42]) != ope.encode([42])
    with pytest.raises(ValueError, match="does not decode"):
        other.decode(ope.encode([1, 2, 3, 4, 5, 6, 7, 8]))


def test_negotiation_nests_budgets_and_keeps_order() -> None:
    lists = [TopK((5, 9)), TopK((9, 2)), TopK((1, 9, 7, 4)), TopK((7, 1, 3, 0, 6, 8, 2, 5))]
    g = merge_global_list(lists)
    assert len(g) == 8 and len(set(g)) == 8
    assert g[0] == 9  # listed by most clients, the tier-1 (k=2) choice
    for t in lists:  # every client encrypts a prefix; prefixes nest by construction
        assert g[: len(t.codes)] == merge_global_list(lists)[: len(t.codes)]
    extended = merge_global_list(lists + [TopK(tuple(range(20, 30)))], prefix=g)
    assert extended[:8] == g and len(extended) == 10
    assert merge_global_list([TopK((3, 1, 2))]) == [3, 1, 2]  # a single client's own order survives


def test_negotiation_uses_scores_when_sent() -> None:
    lists = [TopK((1, 2), (1.0, 0.9)), TopK((3, 4), (5.0, 0.1))]
    g = merge_global_list(lists, shares=(0.0, 0.0, 1.0))
    assert g == [3, 1]


@pytest.mark.parametrize(
    ("n", "g"),
    [(10, [0, 3]), (10, [8, 3]), (10, [9, 0, 8, 3]), (10, [1, 9, 8]), (12, [11, 10, 0, 5, 6, 1]), (6, [5, 4, 3, 2, 1, 0])],
)
def test_swap_moves_global_list_right_and_inverts_in_reverse(n: int, g: list[int]) -> None:
    layout = ColumnLayout.from_global_list(g, n, swap=True)
    x = torch.arange(3 * n, dtype=torch.float64).reshape(3, n)
    y = layout.apply(x)
    for j, col in enumerate(g):
        assert torch.equal(y[:, n - 1 - j], x[:, col])
    assert torch.equal(layout.undo(y), x)
    assert torch.equal(y[:, torch.as_tensor(np.argsort(layout.perm))], x)


def test_forward_reapplication_is_not_an_inverse() -> None:
    """The public code undid the swap by reapplying it; with overlapping transpositions that is wrong."""
    layout = ColumnLayout.from_global_list([9, 0, 8, 3], 10)
    x = torch.arange(10.0)[None]
    assert not torch.equal(layout.apply(layout.apply(x)), x)
    assert torch.equal(layout.undo(layout.apply(x)), x)


def test_unswapped_layout_and_bad_lists() -> None:
    layout = ColumnLayout.from_global_list([2, 7], 8, swap=False)
    assert layout.perm == (0, 1, 3, 4, 5, 6, 7, 2)
    x = torch.randn(2, 8)
    assert torch.equal(layout.undo(layout.apply(x)), x)
    with pytest.raises(ValueError, match="distinct"):
        ColumnLayout.from_global_list([1, 1], 8)
    with pytest.raises(ValueError, match="8 columns"):
        layout.apply(torch.zeros(2, 9))


def test_client_lift_order_is_a_prefix_for_every_budget() -> None:
    shapes = {"a": (4, 100), "b": (4, 37), "c": (4, 250)}
    budgets = [0.01, 0.05, 0.12, 0.3]
    k_max = {m: budget_columns(max(budgets), n) for m, (_, n) in shapes.items()}
    order = client_lift_order(shapes, k_max)
    for b in budgets:
        mine = [(m, j) in {(m, j) for m, (_, n) in shapes.items() for j in range(budget_columns(b, n))} for m, j in order]
        assert mine == sorted(mine, reverse=True)  # all True, then all False


def test_fuse_equals_dense_sum() -> None:
    gen = torch.Generator().manual_seed(0)
    m, n, g = 6, 9, [4, 8, 0]
    layout = ColumnLayout.from_global_list(g, n)
    terms, dense = [], torch.zeros(m, n, dtype=torch.float64)
    lifted = torch.zeros(m, 3, dtype=torch.float64)
    for r, k in [(2, 1), (3, 3)]:
        A, B = torch.randn(r, n, generator=gen, dtype=torch.float64), torch.randn(m, r, generator=gen, dtype=torch.float64)
        dense += B @ A
        ap = layout.apply(A)
        terms.append((1.0, B, ap[:, : n - k]))
        lifted[:, :k] += B @ ap[:, n - 1 - torch.arange(k)]
    us, vh = plain_aggregate(terms, n)
    assert torch.allclose(fuse(us, vh, lifted, layout).dense(), dense, atol=1e-12)


@pytest.fixture(scope="module")
def lift_setup() -> tuple:
    shapes = {"x": (40, 30), "y": (20, 30), "z": (700, 40)}  # z: two row windows per group
    clients = [(2, {"x": 3, "y": 1, "z": 20}), (4, {"x": 7, "y": 2, "z": 20}), (3, {"x": 0, "y": 2, "z": 0})]
    groups = server_lift_groups(shapes, clients, 64)  # tiny slot count: several blocks, windows, lanes
    ctx = ckks.make_secret_context(ckks.CKKSParams(poly_modulus_degree=8192, galois_keys=True), rotation_steps(groups))
    return shapes, clients, groups, ctx


def test_server_lift_matches_numpy(lift_setup: tuple) -> None:
    shapes, clients, groups, ctx = lift_setup
    slots = ctx.slot_count
    groups = server_lift_groups(shapes, clients, slots)
    server = ckks.load_public_context(ckks.public_context_bytes(ctx))
    lift = ServerLift(server, groups, shapes)
    rng = np.random.default_rng(0)
    k_max = {name: max(ks[name] for _, ks in clients) for name in shapes}
    expect = {name: np.zeros((m, k_max[name])) for name, (m, _) in shapes.items()}
    for (r, ks), coef in zip(clients, [0.5, 0.3, 0.2]):
        cols = {name: rng.normal(0, 0.1, (r, ks[name])) for name in shapes}
        B = {name: rng.normal(0, 0.1, (m, r)) for name, (m, _) in shapes.items()}
        blocks = client_blocks(groups, r, ks, slots)
        lift.add_client([ctx.encrypt_slots(v) for v in pack_blocks(cols, groups, blocks, slots)], blocks, B, coef)
        for name in shapes:
            expect[name][:, : ks[name]] += coef * B[name] @ cols[name]
    out = lift.finish()
    assert groups["z"][0].n_out(700) == 2
    for name, (m, _) in shapes.items():
        got = decode_lift(ctx, out[name], groups[name], m, expect[name].shape[1])
        assert np.abs(got - expect[name]).max() < 1e-8 * max(1.0, np.abs(expect[name]).max())


def test_server_lift_layout_with_few_slots(lift_setup: tuple) -> None:
    shapes, clients, groups, _ = lift_setup
    for name, gs in groups.items():
        assert [g.start for g in gs] == sorted(g.start for g in gs)
        for g, (r, ks) in itertools.product(gs, clients):
            if ks[name] >= g.end:  # a contributor's reads stay inside its tile
                copies = 64 // (r * g.width)
                assert g.rows + r - 1 <= copies * r and g.rows * g.width <= 64
    blocks = client_blocks(groups, 4, clients[1][1], 64)
    assert all(b.offset + b.size <= 64 for b in blocks)
