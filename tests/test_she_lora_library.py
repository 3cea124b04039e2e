"""she_lora library pieces: sensitivity, OPE, ordered negotiation, column swap, layouts, server lift, imports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from she_lora import ckks
from she_lora.layout import band_rows, client_blocks, client_lift_order, server_lift_bands
from she_lora.lift import LiftInput, ServerLift, decode_lift, output_exponents, pack_blocks
from she_lora.lowrank import relative_error
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


SHAPES = {"x": (40, 30), "y": (20, 30), "z": (700, 40), "w": (5000, 16)}  # w: several row windows
CLIENTS = [(2, {"x": 3, "y": 1, "z": 20, "w": 5}), (4, {"x": 7, "y": 2, "z": 20, "w": 5}), (3, {"x": 0, "y": 2, "z": 0, "w": 9})]


@pytest.fixture(scope="module")
def lift_ctx() -> ckks.CKKSContext:
    return ckks.make_secret_context(ckks.CKKSParams(poly_modulus_degree=8192, galois_keys=True))


@pytest.mark.parametrize(("exponents", "planes"), [(False, None), (True, None), (True, 2), (True, 4)],
                         ids=["raw", "scaled", "2-planes", "4-planes"])
def test_server_lift_matches_numpy(lift_ctx: ckks.CKKSContext, exponents: bool, planes: int | None) -> None:
    ctx, slots = lift_ctx, lift_ctx.slot_count
    bands = server_lift_bands(SHAPES, CLIENTS, slots, planes)
    assert any(b.n_out > 1 for b in bands)
    if planes:
        assert any(b.planes == planes for b in bands)
    server = ckks.load_public_context(ckks.public_context_bytes(ctx))
    rng = np.random.default_rng(0)
    k_max = {name: max(ks[name] for _, ks in CLIENTS) for name in SHAPES}
    expect = {name: np.zeros((m, k_max[name])) for name, (m, _) in SHAPES.items()}
    inputs = []
    for (r, ks), coef in zip(CLIENTS, [0.5, 0.3, 0.2]):
        cols = {name: rng.normal(0, 1e-4, (r, ks[name])) for name in SHAPES}
        B = {name: rng.normal(0, 0.1, (m, r)) for name, (m, _) in SHAPES.items()}
        e = {name: ckks.exponent_of(c) if exponents else 0 for name, c in cols.items()}
        blocks = client_blocks(bands, r, ks, slots)
        sent = {name: np.ldexp(c, -e[name]) for name, c in cols.items()}
        blobs = [ctx.encrypt_slots(v) for v in pack_blocks(sent, bands, blocks, slots)]
        inputs.append(LiftInput(blobs, blocks, B, coef, e))
        for name in SHAPES:
            expect[name][:, : ks[name]] += coef * B[name] @ cols[name]
    out_e = output_exponents(inputs, bands) if exponents else {}
    lift = ServerLift(server, bands, SHAPES, out_e)
    for x in inputs:
        lift.add(x)
    got = decode_lift(ctx, lift.finish(), bands, SHAPES, k_max, out_e)
    for name in SHAPES:
        err = np.abs(got[name] - expect[name]).max() / np.abs(expect[name]).max()
        assert err < (1e-8 if exponents else 1e-4)


@pytest.mark.parametrize("planes", [None, 2])
@pytest.mark.parametrize("slots", [64, 256, 4096])
def test_server_lift_layout_covers_every_column_once(slots: int, planes: int | None) -> None:
    bands = server_lift_bands(SHAPES, CLIENTS, slots, planes)
    seen: dict[str, list[int]] = {name: [] for name in SHAPES}
    for band in bands:
        assert band.lanes & (band.lanes - 1) == 0 and band.rows * band.lanes <= slots
        lanes = sorted((u.lane, u.lane + u.width) for u in band.units)
        assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(lanes, lanes[1:])) and lanes[-1][1] <= band.lanes
        assert len({SHAPES[u.module][0] for u in band.units}) == 1
        for u in band.units:
            assert u.size <= 2 * u.width * band.planes
            planes = {u.place(c)[0] for c in range(u.size)}
            assert planes <= set(range(band.planes))
            seen[u.module].extend(range(u.start, u.end))
        for r, ks in CLIENTS:  # a holder's r reads per output row stay inside its tile
            if band.held_by(ks):
                copies = slots // (r * band.lanes)
                assert copies * r * band.lanes == slots or band.rows + r - 1 <= copies * r
    for name in SHAPES:
        assert sorted(seen[name]) == list(range(max(ks[name] for _, ks in CLIENTS)))
    for r, ks in CLIENTS:
        blocks = client_blocks(bands, r, ks, slots)
        assert all(b.offset + b.size <= slots for b in blocks)
        assert {(b.band, b.plane) for b in blocks} == {(i, p) for i, band in enumerate(bands) if band.held_by(ks) for p in range(band.planes)}


def test_band_rows_stay_inside_the_tile() -> None:
    assert band_rows(4096, 64, 4) == 64  # 4 x 64 divides 4096: the tile wraps exactly
    assert band_rows(4096, 64, 24) == (4096 // (24 * 64)) * 24 - 23
    assert band_rows(4096, 128, 64) == 0


def test_library_imports_have_no_cycle() -> None:
    """REVIEW item 6: ckks -> _pool -> lift -> ckks. Every import between she_lora modules, module
    level or inside a function, must form a DAG (ckks itself imports no she_lora module)."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "she_lora"
    graph: dict[str, set[str]] = {}
    for path in root.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("she_lora"):
                deps.add(node.module.split(".")[1] if "." in node.module else "__init__")
                if node.module == "she_lora":
                    deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("she_lora."))
        graph[path.stem] = deps - {path.stem}
    assert graph["ckks"] == set()
    state: dict[str, int] = {}

    def visit(mod: str, trail: tuple[str, ...]) -> None:
        if state.get(mod) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(trail + (mod,))}")
        if state.get(mod) == 2:
            return
        state[mod] = 1
        for dep in graph.get(mod, ()):
            visit(dep, trail + (mod,))
        state[mod] = 2

    for mod in graph:
        visit(mod, ())


@pytest.mark.parametrize("n_workers", [2, 3])
def test_server_lift_in_worker_processes_matches_one_process(n_workers: int) -> None:
    """``n_workers`` > 1 deals each band's row windows to forked workers: the same operations in the
    same order per output, so the broadcast is byte for byte the one-process broadcast."""
    import dataclasses

    from benchmark.asv_bench.rounds import SMALL, build_round

    r = build_round("server_lift", {**SMALL, "dim": 512}, dtype=torch.float64)
    assert len(r.plan.bands) >= 2 and all(band.n_out > n_workers for band in r.plan.bands)  # windows to share
    uploads = r.protect_all()
    serial_message = r.aggregate(uploads)
    serial = r.finalize(serial_message)
    r.server.cfg = dataclasses.replace(r.server.cfg, n_workers=n_workers)
    parallel_message = r.aggregate(uploads)
    assert parallel_message[1] == serial_message[1]  # the ciphertexts, in order
    parallel = r.finalize(parallel_message)
    for name, delta in serial.items():
        assert relative_error(parallel[name].dense(), delta.dense()) < 1e-9
