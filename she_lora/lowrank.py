"""Heterogeneous-rank LoRA aggregation (FlexLoRA) without ever forming a dense m x n SVD.

The weighted sum of client deltas sum_i w_i s_i B_i A_i has rank at most R = sum_i r_i. Stacking the
factors gives delta = L @ Rt with L = [w_1 s_1 B_1 | ... ] (m x R) and Rt = [A_1; ...] (R x n); QR of
L and of Rt^T reduces its SVD to that of an R x R core, which costs O((m + n) R^2) instead of O(m n
min(m, n)).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

THREADS_ENV = "SHE_LORA_THREADS"


@contextmanager
def linalg_threads(threads: int | None = None) -> Iterator[None]:
    """Run torch with ``threads`` threads for the duration (default: $SHE_LORA_THREADS, else 1; 0
    leaves torch's setting alone).

    Why one: the factorizations here are a few GFLOP at most, and on a shared 2-core host OpenMP
    threads that spin-wait for a busy neighbour made a 50-client aggregation 5-10x slower in wall
    time and 2x in CPU time; one thread is also bitwise reproducible. An idle multi-core machine can
    set SHE_LORA_THREADS=2 (or more) for wall time.
    """
    want = int(os.environ.get(THREADS_ENV, "1")) if threads is None else threads
    before = torch.get_num_threads()
    if want <= 0 or want == before:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def svd_of_product(left: Tensor, right: Tensor, rank: int | None = None) -> FactoredDelta:
    """Exact thin SVD of ``left @ right`` (m x R times R x n) through two QRs and an R x R SVD.

    ``rank`` keeps only the leading ``rank`` components: the same numbers as truncating the full
    result, without building the other R - rank singular vectors (callers that broadcast or finalize
    at a client's rank need no more). Works on batches (``... x m x R`` and ``... x R x n``). Runs in
    float64 with the thread count of ``linalg_threads``.
    """
    if left.shape[-1] != right.shape[-2] or left.shape[:-2] != right.shape[:-2]:
        raise ValueError(f"inner dimensions differ: left is {tuple(left.shape)}, right is {tuple(right.shape)}")
    if rank is not None and rank < 0:
        raise ValueError(f"svd_of_product: rank must be >= 0, got {rank}")
    dtype = left.dtype
    with linalg_threads():
        u, s, vh = _svd_of_product64(left.double(), right.double(), rank)
    return FactoredDelta(u.to(dtype), s.to(dtype), vh.to(dtype))


def _svd_of_product64(left: Tensor, right: Tensor, rank: int | None) -> tuple[Tensor, Tensor, Tensor]:
    m, inner, n = left.shape[-2], left.shape[-1], right.shape[-1]
    if inner == 0 or m == 0 or n == 0:
        batch = left.shape[:-2]
        return left.new_zeros(*batch, m, 0), left.new_zeros(*batch, 0), left.new_zeros(*batch, 0, n)
    q_left, r_left = _qr(left)
    q_right, r_right = _qr(right.mT)
    core = r_left @ r_right.mT
    full = min(core.shape[-2:])
    k = full if rank is None else min(rank, full)
    if 3 * k <= full:
        u, s, vh = _leading_svd(core, k)
    else:
        u, s, vh = torch.linalg.svd(core, full_matrices=False)
        u, s, vh = u[..., :k], s[..., :k], vh[..., :k, :]
    return q_left(u), s, q_right(vh.mT).mT


_THIN = 128  # stacked ranks up to this: one LAPACK qr call beats geqrf plus a lazy Q (fewer torch ops)


def _qr(x: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """(Q @ ., R) of an m x R factor, R being min(m, R) x R upper triangular. Thin factors get an
    explicit reduced Q; wide stacks keep Q as Householder reflectors (geqrf), applied to the kept
    singular vectors only (cheaper when ``rank`` keeps few of many)."""
    m, inner = x.shape[-2], x.shape[-1]
    if inner <= _THIN:
        q, r = torch.linalg.qr(x)
        return (lambda v: q @ v), r
    reflectors, tau = torch.geqrf(x)
    r = reflectors[..., : min(m, inner), :].triu()
    return (lambda v: _apply_q(reflectors, tau, v)), r


def _leading_svd(core: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The k leading singular triplets of a square-ish core, about twice as fast as its full SVD.

    The subspace comes from the eigenvectors of the Gram matrix (eigh costs half an SVD); the
    singular values and vectors then come from a Rayleigh-Ritz step, an exact SVD of the k x q
    projection U_k^T core. Squaring only perturbs the subspace (by about eps * s_1^2 / gap); the
    truncated product it yields stays within ~1e-12 of the full SVD's truncation (tests check it).
    """
    if core.shape[-2] > core.shape[-1]:
        v, s, uh = _leading_svd(core.mT, k)
        return uh.mT, s, v.mT
    _, vecs = torch.linalg.eigh(core @ core.mT)
    basis = vecs[..., -k:].flip(-1)
    p, s, qh = torch.linalg.svd(core.mT @ basis, full_matrices=False)
    return basis @ qh.mT, s, p.mT


def _apply_q(reflectors: Tensor, tau: Tensor, x: Tensor) -> Tensor:
    """Q @ x for the m x q orthonormal Q of ``geqrf`` (x: q x k)."""
    m, q, k = reflectors.shape[-2], x.shape[-2], x.shape[-1]
    if 4 * k < q:  # few kept vectors: apply the reflectors to them directly (O(m q k))
        padded = x.new_zeros(*x.shape[:-2], m, k)
        padded[..., :q, :] = x
        return torch.ormqr(reflectors[..., :, :q], tau[..., :q], padded)
    return torch.linalg.householder_product(reflectors[..., :, :q], tau[..., :q]) @ x


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


def aggregate_lowrank(terms: Sequence[tuple[float, Tensor, Tensor]], rank: int | None = None) -> FactoredDelta:
    """SVD of sum_i w_i B_i A_i, computed through the stacked factors (never densely); ``rank``
    keeps the leading components only (see ``svd_of_product``)."""
    return svd_of_product(*stack_factors(terms), rank=rank)


def aggregate_dense_svd(terms: Sequence[tuple[float, Tensor, Tensor]]) -> FactoredDelta:
    """The textbook way (dense m x n sum, then full SVD): a reference for tests and benchmarks only."""
    dense = sum(w * (b.double() @ a.double()) for w, b, a in terms)
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    k = min(sum(a.shape[0] for _, _, a in terms), s.shape[0])
    dtype = terms[0][1].dtype
    return FactoredDelta(u[:, :k].to(dtype), s[:k].to(dtype), vh[:k].to(dtype))


def to_lora(delta: FactoredDelta, rank: int, scale: float, generator: torch.Generator | None = None,
            place: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Split the best rank-``rank`` approximation of ``delta`` into LoRA factors (A, B) so that
    ``scale * B @ A`` equals it; the alpha/r scaling is divided out symmetrically.

    When the aggregate has fewer than ``rank`` directions, the missing rows of A get small random
    values (B stays zero there), as a fresh LoRA would, so those directions can still learn. They are
    drawn from ``generator`` and then passed through ``place`` (default: as drawn): a client whose
    uploads a server sees in a secret column order draws them in that order and places them back
    with ``place``, so that a server replaying the draw learns nothing about the order (see
    ``defenses.common.finalize_to_rank``). An i.i.d. Gaussian block is the same distribution in any
    column order, so this costs the client nothing.
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
        if place is not None:
            extra_a = place(extra_a)
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
