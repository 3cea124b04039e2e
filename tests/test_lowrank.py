import pytest
import torch

from she_lora.lowrank import (
    aggregate_dense_svd,
    aggregate_lowrank,
    linalg_threads,
    relative_error,
    svd_of_product,
    to_lora,
)


def terms(m=60, n=50, ranks=(4, 8, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(len(ranks), generator=g, dtype=torch.float64)
    w = w / w.sum()
    return [(float(wi) * 16 / r, torch.randn(m, r, generator=g, dtype=torch.float64),
             torch.randn(r, n, generator=g, dtype=torch.float64)) for wi, r in zip(w, ranks)]


@pytest.mark.parametrize("ranks", [(4, 8, 16), (2,), (8, 8, 8, 8, 8, 8, 8, 8)])
def test_stacked_qr_equals_dense_svd(ranks):
    t = terms(ranks=ranks)
    fast, dense = aggregate_lowrank(t), aggregate_dense_svd(t)
    k = min(fast.rank, dense.rank)
    assert torch.allclose(fast.S[:k], dense.S[:k], rtol=1e-9, atol=1e-9)
    assert relative_error(fast.dense(), dense.dense()) < 1e-10
    for r in (1, 4, 8):  # truncations agree as matrices (singular vectors only up to sign)
        assert relative_error(fast.truncate(r).dense(), dense.truncate(r).dense()) < 1e-8


def test_to_lora_accounts_for_scaling_and_pads_missing_directions():
    t = terms(ranks=(2, 2))
    delta = aggregate_lowrank(t)
    scale = 16 / 8
    A, B = to_lora(delta, 8, scale, torch.Generator().manual_seed(0))
    assert A.shape == (8, 50) and B.shape == (60, 8)
    assert relative_error(scale * B @ A, delta.dense()) < 1e-10  # rank 4 aggregate fits in rank 8
    assert torch.all(B[:, 4:] == 0) and A[4:].abs().sum() > 0
    with pytest.raises(ValueError, match="rank must be positive"):
        to_lora(delta, 0, scale)


def test_mismatched_shapes_are_refused():
    good = terms(ranks=(4,))
    bad = [(1.0, torch.randn(61, 4), torch.randn(4, 50))]
    with pytest.raises(ValueError, match="disagree on the module shape"):
        aggregate_lowrank(good + bad)


@pytest.mark.parametrize(("ranks", "keep"), [((4, 8, 16), 4), ((4, 8, 16), 20), ((8,) * 12, 8), ((2,), 1)])
def test_rank_keeps_the_leading_components_of_the_full_svd(ranks, keep):
    """``rank=k`` (the leading-SVD path when k <= R/3, else a truncated full SVD) equals truncating
    the full result: same singular values, same rank-k product."""
    t = terms(m=120, n=90, ranks=ranks)
    full, cut = aggregate_lowrank(t), aggregate_lowrank(t, rank=keep)
    k = min(keep, full.rank)
    assert cut.rank == k and cut.U.shape == (120, k) and cut.Vh.shape == (k, 90)
    assert torch.allclose(cut.S, full.S[:k], rtol=1e-10, atol=0)
    assert relative_error(cut.dense(), full.truncate(k).dense()) < 1e-10
    assert torch.allclose(cut.U.T @ cut.U, torch.eye(k, dtype=torch.float64), atol=1e-12)


def test_rank_on_a_near_degenerate_spectrum_still_gives_the_best_approximation():
    """Equal singular values make the k-th vectors ill-defined; the rank-k product error must still be
    the optimal one (Eckart-Young), whichever vectors were picked."""
    g = torch.Generator().manual_seed(3)
    q1, _ = torch.linalg.qr(torch.randn(80, 30, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(70, 30, generator=g, dtype=torch.float64))
    s = torch.cat([torch.full((12,), 1.0), torch.logspace(-1, -8, 18, dtype=torch.float64)]).double()
    left, right = q1 * s, q2.T
    cut = svd_of_product(left, right, rank=6)
    dense = left @ right
    optimal = float(torch.linalg.norm(s[6:]))
    assert abs(float(torch.linalg.norm(dense - cut.dense())) - optimal) < 1e-10


def test_batched_wide_and_empty_products():
    g = torch.Generator().manual_seed(1)
    left = torch.randn(3, 5, 9, generator=g, dtype=torch.float64)  # wide: more stacked rank than rows
    right = torch.randn(3, 9, 7, generator=g, dtype=torch.float64)
    out = svd_of_product(left, right)
    assert out.U.shape == (3, 5, 5) and out.Vh.shape == (3, 5, 7)
    assert torch.allclose((out.U * out.S[..., None, :]) @ out.Vh, left @ right, atol=1e-12)
    empty = svd_of_product(torch.zeros(4, 0), torch.zeros(0, 6))
    assert empty.rank == 0 and empty.dense().shape == (4, 6) and not empty.dense().any()
    with pytest.raises(ValueError, match="inner dimensions"):
        svd_of_product(torch.zeros(4, 2), torch.zeros(3, 6))


def test_linalg_threads_restores_the_setting(monkeypatch):
    before = torch.get_num_threads()
    with linalg_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setenv("SHE_LORA_THREADS", "0")  # 0: leave torch alone
    with linalg_threads():
        assert torch.get_num_threads() == before
