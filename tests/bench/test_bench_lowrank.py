"""FlexLoRA aggregation micro-benchmarks: stacked QR (what every defense's server runs) against the
dense m x n SVD it replaces, over clients x rank. Runs once as a test by default; ``make bench`` times it."""

from __future__ import annotations

from typing import Any

import pytest
import torch

lowrank = pytest.importorskip("she_lora.lowrank")

DIM = 512
SIZES = [(4, 8), (16, 32)]  # (clients, rank): stacked rank 32 and 512 (= DIM, the crossover)


@pytest.mark.benchmark(group="flexlora")
@pytest.mark.parametrize("clients,rank", SIZES, ids=[f"{c}x r{r}" for c, r in SIZES])
@pytest.mark.parametrize("method", ["stacked_qr", "dense_svd"])
def test_aggregate(benchmark: Any, method: str, clients: int, rank: int) -> None:
    gen = torch.Generator().manual_seed(0)
    terms = [(1.0 / clients, torch.randn(DIM, rank, generator=gen) * 0.01, torch.randn(rank, DIM, generator=gen))
             for _ in range(clients)]
    fn = lowrank.aggregate_lowrank if method == "stacked_qr" else lowrank.aggregate_dense_svd
    benchmark.extra_info.update(stacked_rank=clients * rank, dim=DIM,
                                factor_bytes=sum(a.numel() + b.numel() for _, b, a in terms) * 4)
    out = benchmark.pedantic(fn, args=(terms,), rounds=3, warmup_rounds=1)
    dense = sum(w * b @ a for w, b, a in terms)
    assert lowrank.relative_error(out.dense(), dense) < 1e-4
