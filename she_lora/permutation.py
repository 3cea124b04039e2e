"""Column swapping: one permutation, shared by all clients, that moves the global list to the right end.

With G = (c_0, ..., c_{K-1}), the transpositions are applied in order: for j = 0..K-1, swap the
current position of column c_j with position n-1-j. Afterwards position n-1-j holds c_j for every j,
so client i's encrypted block is the right-most k_i positions and every client's plaintext position p
holds the same original column. Undoing applies the same transpositions in *reverse* order (the
public code reapplied them forwards, which is only correct when they are disjoint).

``swap=False`` keeps the other columns in ascending order instead (no scrambling: only the removal
of the encrypted block changes the layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class ColumnLayout:
    """``perm[p]`` is the original column at permuted position p; ``swaps`` the transpositions."""

    n: int
    perm: tuple[int, ...]
    swaps: tuple[tuple[int, int], ...] | None

    @classmethod
    def from_global_list(cls, global_list: Sequence[int], n: int, swap: bool = True) -> ColumnLayout:
        g = [int(c) for c in global_list]
        if len(set(g)) != len(g) or any(not 0 <= c < n for c in g) or len(g) > n:
            raise ValueError(f"global list must hold distinct columns in [0, {n}), got {g[:8]}...")
        if not swap:
            tail = set(g)
            perm = [c for c in range(n) if c not in tail] + g[::-1]
            return cls(n, tuple(perm), None)
        at = list(range(n))  # at[p]: original column at position p
        where = list(range(n))  # where[c]: position of original column c
        swaps = []
        for j, col in enumerate(g):
            p, q = where[col], n - 1 - j
            swaps.append((p, q))
            at[p], at[q] = at[q], at[p]
            where[at[p]], where[at[q]] = p, q
        return cls(n, tuple(at), tuple(swaps))

    @cached_property
    def _index(self) -> Tensor:
        return torch.as_tensor(self.perm)

    def apply(self, x: Tensor) -> Tensor:
        """Columns (last dim) of ``x`` in permuted order (a new tensor)."""
        self._check(x)
        return x[..., self._index.to(x.device)]

    def undo(self, x: Tensor) -> Tensor:
        """Back to the original column order: the transpositions in reverse order (a new tensor)."""
        self._check(x)
        if self.swaps is None:
            return x[..., torch.as_tensor(np.argsort(self.perm), device=x.device)]
        out = x.clone()
        for p, q in reversed(self.swaps):
            if p != q:
                out[..., [p, q]] = out[..., [q, p]]
        return out

    def _check(self, x: Tensor) -> None:
        if x.shape[-1] != self.n:
            raise ValueError(f"column layout is for {self.n} columns, tensor has {x.shape[-1]}")
