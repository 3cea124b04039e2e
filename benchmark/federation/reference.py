"""The referee's own truth for ``agg_rel_err``, computed without the library under test.

What an exact aggregate must equal: the dense sample-weighted sum of the clients' deltas,
``W = sum_i w_i * s_i * B_i @ A_i`` (``w_i = n_i / sum n``), in float64; what a client of rank ``r``
should end up with: the best rank-``r`` approximation of ``W`` (Eckart-Young, i.e. the truncated
SVD). ``she_lora`` is never imported here: a bug in its low-rank code must show up as an error, not
cancel out. For paper-scale shapes (3200 x 3200 per module) a dense SVD per module is slow, so the
truncation goes through thin QRs of the stacked factors and an SVD of their small core, which gives
the same rank-``r`` matrix (``tests/test_reference.py`` checks it against the dense SVD).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmark.contract import ClientInfo, ClientUpdate, LoRAFactors


@dataclass(frozen=True)
class Factored:
    """A module's reference delta as ``U @ diag(S) @ Vh`` (float64, singular values descending)."""

    U: Tensor
    S: Tensor
    Vh: Tensor

    def truncated(self, rank: int) -> Tensor:
        """The best rank-``rank`` approximation, dense."""
        return (self.U[:, :rank] * self.S[:rank]) @ self.Vh[:rank]


def factor_sum(terms: Sequence[tuple[float, Tensor, Tensor]]) -> Factored:
    """SVD of ``sum_i c_i * B_i @ A_i`` from thin QRs of the stacked factors (float64)."""
    B = torch.cat([c * b.double() for c, b, _ in terms], dim=1)  # m x R
    A = torch.cat([a.double() for _, _, a in terms], dim=0)  # R x n
    Qb, Rb = torch.linalg.qr(B)
    Qa, Ra = torch.linalg.qr(A.T)
    U, S, Vh = torch.linalg.svd(Rb @ Ra.T, full_matrices=False)  # thin: a rank above min(m, n) truncates nothing
    return Factored(Qb @ U, S, Vh @ Qa.T)


def reference_aggregate(updates: Sequence[ClientUpdate]) -> dict[str, Factored]:
    """Per module, the sample-weighted sum of the clients' raw deltas, factored."""
    total = sum(u.n_samples for u in updates)
    return {
        name: factor_sum([(u.n_samples / total * u.factors[name].scale, u.factors[name].B, u.factors[name].A)
                          for u in updates])
        for name in updates[0].factors
    }


def relative_error(approx: Tensor, reference: Tensor) -> float:
    """``||approx - reference||_F / ||reference||_F`` in float64 (the plain difference when the
    reference is zero)."""
    ref = torch.linalg.norm(reference.double())
    diff = torch.linalg.norm(approx.double() - reference.double())
    return float(diff) if ref == 0 else float(diff / ref)


def aggregation_error(finalized: Mapping[str, LoRAFactors], reference: Mapping[str, Factored], client: ClientInfo) -> float:
    """Worst relative error, over modules, of a client's finalized own-rank delta against the
    reference truncated to the client's rank."""
    return max((relative_error(finalized[name].delta(), ref.truncated(client.rank)) for name, ref in reference.items()),
               default=0.0)
