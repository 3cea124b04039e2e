"""Column sensitivity of LoRA-A (Wanda-style) and per-client column budgets.

S_j = sum_k |A_kj| * ||x_j||_2: a column matters when its weights are large *and* the input feature
it reads is large, because A's j-th column only ever multiplies input feature j. The absolute value
goes inside the sum (the paper's formula; one public implementation takes it outside, which lets
positive and negative entries cancel).
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor


def column_sensitivity(A: Tensor, input_sq_norms: Tensor) -> np.ndarray:
    """Scores (n,) for A of shape (r, n) and per-feature sums of squares (n,) over calibration tokens."""
    if A.ndim != 2:
        raise ValueError(f"sensitivity: A must be 2-D (r, n), got shape {tuple(A.shape)}")
    if input_sq_norms.ndim != 1 or input_sq_norms.shape[0] != A.shape[1]:
        raise ValueError(
            f"sensitivity: input_sq_norms has shape {tuple(input_sq_norms.shape)}, expected ({A.shape[1]},) for A {tuple(A.shape)}"
        )
    col = A.detach().double().abs().sum(dim=0).cpu().numpy()
    norms = np.sqrt(np.clip(input_sq_norms.detach().double().cpu().numpy(), 0.0, None))
    return col * norms


def budget_columns(budget: float, n: int) -> int:
    """k = ceil(budget * n) columns; rounded first so 0.00125 * 3200 gives 4, not 5."""
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"encryption budget must be in [0, 1], got {budget}")
    return min(n, math.ceil(round(budget * n, 9)))


def top_columns(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest scores, best first; ties go to the lower index (deterministic)."""
    idx = np.arange(len(scores))
    order = np.lexsort((idx, -np.asarray(scores, dtype=np.float64)))
    return [int(j) for j in order[:k]]
