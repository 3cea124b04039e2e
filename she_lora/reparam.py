"""Column-aware aggregation in plaintext and the client's reparameterisation.

The aggregate is delta = sum_i w_i s_i B_i A_i, split by columns of the (shared) permuted layout:
plaintext columns are summed as stacked factors, encrypted ones arrive as lifted m-vectors c_j for
global-list position j, which sits at permuted position n-1-j. So, in permuted coordinates,

    delta = [US | C] @ [Vh ; E],  E[j, n-1-j] = 1,

which is a product of an m x (R + K) and an (R + K) x n factor. Undoing the permutation on the right
factor's columns and taking ``svd_of_product`` gives the exact fused aggregate without ever forming
the dense m x n matrix (the paper's Eq. 4 SVDs the dense product).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from she_lora.lowrank import FactoredDelta, linalg_threads, stack_factors, svd_of_product
from she_lora.permutation import ColumnLayout

EXPONENTS_KEY = "lift_exponents"


def thin_linalg() -> AbstractContextManager[None]:
    """Torch with the library's thread count (``she_lora.lowrank.linalg_threads``: one by default).
    The factors here are thin (m x R, R ~ tens): threads buy nothing, and on a busy 2-core host
    OpenMP oversubscription made them ~20x slower."""
    return linalg_threads()


def exponents_tensor(exponents: Mapping[str, int], shapes: Mapping[str, tuple[int, int]]) -> Tensor:
    """The per-module exponents as one int64 tensor, modules in sorted order (how they travel)."""
    return torch.tensor([int(exponents.get(name, 0)) for name in sorted(shapes)], dtype=torch.int64)


def read_exponents(plain: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """Inverse of ``exponents_tensor``; a payload without them (older peers) means all zero."""
    names = sorted(shapes)
    if EXPONENTS_KEY not in plain:
        return dict.fromkeys(names, 0)
    values = plain[EXPONENTS_KEY].tolist()
    if len(values) != len(names):
        raise ValueError(f"{EXPONENTS_KEY}: {len(values)} exponents for {len(names)} modules")
    return {name: int(e) for name, e in zip(names, values)}


def plain_aggregate(terms: Sequence[tuple[float, Tensor, Tensor]], n: int) -> tuple[Tensor, Tensor]:
    """(US, Vh) of sum_i coef_i B_i A_i^plain, each A_i^plain (r_i x (n - k_i)) zero-padded on the right."""
    padded = []
    for coef, B, A in terms:
        if A.shape[1] > n:
            raise ValueError(f"plaintext A has {A.shape[1]} columns, more than n={n}")
        full = torch.zeros(A.shape[0], n, dtype=torch.float64)
        full[:, : A.shape[1]] = A.double()
        padded.append((coef, B.double(), full))
    delta = svd_of_product(*stack_factors(padded))
    return delta.U * delta.S, delta.Vh


def lift_columns(B: Tensor, encrypted: Tensor, coef: float) -> Tensor:
    """coef * B @ encrypted: the m-vector per encrypted column (client lift), float64."""
    return coef * (B.double() @ encrypted.double())


def fuse(us: Tensor, vh: Tensor, lifted: Tensor, layout: ColumnLayout, rank: int | None = None) -> FactoredDelta:
    """The aggregate in the original column order from the plaintext part and lifted columns;
    ``rank`` keeps its leading components only (``svd_of_product``)."""
    n, K = layout.n, lifted.shape[1]
    if vh.shape[1] != n or us.shape[0] != lifted.shape[0]:
        raise ValueError(f"fuse: plaintext part {tuple(us.shape)} x {tuple(vh.shape)} does not match lifted {tuple(lifted.shape)}")
    unit = torch.zeros(K, n, dtype=torch.float64)
    unit[torch.arange(K), n - 1 - torch.arange(K)] = 1.0
    left = torch.cat([us.double(), lifted.double()], dim=1)
    right = layout.undo(torch.cat([vh.double(), unit], dim=0))
    return svd_of_product(left, right, rank=rank)
