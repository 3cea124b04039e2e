import pytest
import torch

from she_lora.lowrank import aggregate_dense_svd, aggregate_lowrank, relative_error, to_lora


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
