"""FlexLoRA aggregation (she_lora.lowrank): the stacked-QR path every defense's server uses against the
dense m x n SVD it replaces. The crossover (stacked rank R = clients x rank near the width) is the point
of parametrizing over clients and rank."""

from __future__ import annotations

from typing import Any

import torch

from .common import Bench, need, seed_all

DIM = 768  # width and height of the adapted module


class FlexLoRAAggregate(Bench):
    """sum_i w_i s_i B_i A_i, factored through QR of the stacked factors, versus densely."""

    version = "2"  # 2: CPU-time timer
    params = [[4, 16], [8, 32]]
    param_names = ["n_clients", "rank"]

    def setup(self, n_clients: int, rank: int) -> None:
        seed_all()
        self.lowrank: Any = need("she_lora.lowrank")
        gen = torch.Generator().manual_seed(0)
        self.terms = [(1.0 / n_clients, torch.randn(DIM, rank, generator=gen) * 0.01,
                       torch.randn(rank, DIM, generator=gen) / DIM**0.5) for _ in range(n_clients)]

    def time_stacked_qr(self, n_clients: int, rank: int) -> None:
        self.lowrank.aggregate_lowrank(self.terms)

    def time_dense_svd(self, n_clients: int, rank: int) -> None:
        self.lowrank.aggregate_dense_svd(self.terms)
