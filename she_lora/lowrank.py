"""Heterogeneous-rank LoRA aggregation (FlexLoRA) without ever forming a dense m x n SVD.

The weighted sum of client deltas sum_i w_i s_i B_i A_i has rank at most R = sum_i r_i. Stacking the
factors gives delta = L @ Rt with L = [w_1 s_1 B_1 | ... ] (m x R) and Rt = [A_1; ...] (R x n); QR of
L and of Rt^T reduces its SVD to that of an R x R core, which costs O((m + n) R^2) instead of O(m n
min(m, n)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FactoredDelta:
    """delta W = U @ diag(S) @ Vh with orthonormal U (m x k) and Vh (k x n), S descending."""

    U: Tensor
    S: Tensor
    Vh: Tensor

    @property
    def rank(self) -> int:
        return int(self.S.shape[0])

    def dense(self) -> Tensor:
        return (self.U * self.S) @ self.Vh

    def truncate(self, rank: int) -> FactoredDelta:
        return FactoredDelta(self.U[:, :rank], self.S[:rank], self.Vh[:rank])


def svd_of_product(left: Tensor, right: Tensor) -> FactoredDelta:
    """Exact thin SVD of ``left @ right`` (m x R times R x n) through two QRs and an R x R SVD."""
    if left.shape[1] != right.shape[0]:
        raise ValueError(f"inner dimensions differ: left is {tuple(left.shape)}, right is {tuple(right.shape)}")
    dtype = left.dtype
    left64, right64 = left.double(), right.double()
    q_left, r_left = torch.linalg.qr(left64)
    q_right, r_right = torch.linalg.qr(right64.T)
    u, s, vh = torch.linalg.svd(r_left @ r_right.T, full_matrices=False)
    return FactoredDelta((q_left @ u).to(dtype), s.to(dtype), (vh @ q_right.T).to(dtype))


def stack_factors(terms: Sequence[tuple[float, Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack weighted (w, B, A) terms into (L, Rt) with L @ Rt = sum_i w_i B_i A_i."""
    if not terms:
        raise ValueError("nothing to aggregate: no client terms")
    shapes = {(b.shape[0], a.shape[1]) for _, b, a in terms}
    if len(shapes) != 1:
        raise ValueError(f"client factors disagree on the module shape: {sorted(shapes)}")
    left = torch.cat([w * b for w, b, _ in terms], dim=1)
    right = torch.cat([a for _, _, a in terms], dim=0)
    return left, right


def aggregate_lowrank(terms: Sequence[tuple[float, Tensor, Tensor]]) -> FactoredDelta:
    """SVD of sum_i w_i B_i A_i, computed through the stacked factors (never densely)."""
    return svd_of_product(*stack_factors(terms))


def aggregate_dense_svd(terms: Sequence[tuple[float, Tensor, Tensor]]) -> FactoredDelta:
    """The textbook way (dense m x n sum, then full SVD): a reference for tests and benchmarks only."""
    dense = sum(w * (b.double() @ a.double()) for w, b, a in terms)
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    k = min(sum(a.shape[0] for _, _, a in terms), s.shape[0])
    dtype = terms[0][1].dtype
    return FactoredDelta(u[:, :k].to(dtype), s[:k].to(dtype), vh[:k].to(dtype))


def to_lora(delta: FactoredDelta, rank: int, scale: float, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Split the best rank-``rank`` approximation of ``delta`` into LoRA factors (A, B) so that
    ``scale * B @ A`` equals it; the alpha/r scaling is divided out symmetrically.

    When the aggregate has fewer than ``rank`` directions, the missing rows of A get small random
    values (B stays zero there), as a fresh LoRA would, so those directions can still learn.
    """
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    k = min(rank, delta.rank)
    root = torch.sqrt(delta.S[:k].clamp_min(0) / scale)
    B = delta.U[:, :k] * root
    A = root[:, None] * delta.Vh[:k]
    if k < rank:
        n, m = delta.Vh.shape[1], delta.U.shape[0]
        extra_a = torch.randn(rank - k, n, generator=generator, dtype=A.dtype) / (n**0.5)
        A = torch.cat([A, extra_a.to(A.device)], dim=0)
        B = torch.cat([B, torch.zeros(m, rank - k, dtype=B.dtype, device=B.device)], dim=1)
    return A.contiguous(), B.contiguous()


def relative_error(approx: Tensor, reference: Tensor) -> float:
    """||approx - reference||_F / ||reference||_F (0 when both are zero)."""
    ref = torch.linalg.norm(reference.double())
    diff = torch.linalg.norm(approx.double() - reference.double())
    if ref == 0:
        return float(diff)
    return float(diff / ref)
