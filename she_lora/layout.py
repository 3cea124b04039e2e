"""Where every encrypted value sits, decided once per federation so that all clients agree.

Two layouts, one per lift mode:

- client lift: each client encrypts whole lifted columns (m values each). Entries (module, j) are
  ordered by j / n_module, so every client's set {j < k_i} is a prefix of the order (k_i = ceil(b_i n)
  is monotone in the budget) and the server sums ciphertext c of every client that reaches it.
- server lift: each client encrypts the r x C block of A-columns of a column *group* (a run of global
  list positions between two budget tiers, so a client has either all of a group or none of it),
  complex-packed: the first ceil(C/2) columns in the real parts, the rest in the imaginary parts.
  The server lifts each block to output ciphertexts of T rows x ceil(C/2) lanes (see ``she_lora.lift``);
  T is shared by all clients of the group so their products add slot by slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Group:
    """Global-list positions [start, start + size); ``width`` lanes per slot row; ``rows`` T per output ct."""

    start: int
    size: int
    width: int
    rows: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def n_out(self, m: int) -> int:
        return -(-m // self.rows)


@dataclass(frozen=True)
class Block:
    """One client's encrypted block: group ``group`` of ``module`` at slots [offset, offset+size) of ct ``ct``."""

    module: str
    group: int
    ct: int
    offset: int
    size: int


def server_lift_groups(
    shapes: Mapping[str, tuple[int, int]], clients: Sequence[tuple[int, Mapping[str, int]]], slots: int
) -> dict[str, tuple[Group, ...]]:
    """Column groups per module from every client's (rank, {module: k}); ``slots`` = complex slots."""
    plans: dict[str, tuple[Group, ...]] = {}
    for name in sorted(shapes):
        m = shapes[name][0]
        active = [(r, ks.get(name, 0)) for r, ks in clients if ks.get(name, 0) > 0]
        if not active:
            plans[name] = ()
            continue
        cap = max(1, slots // (4 * max(r for r, _ in active)))  # lanes per row: every block <= slots/4
        bounds = sorted({0} | {k for _, k in active})
        groups = []
        for lo, hi in zip(bounds, bounds[1:]):
            for start in range(lo, hi, 2 * cap):
                size = min(2 * cap, hi - start)
                width = -(-size // 2)
                rows = min(slots // width, m)
                for r, k in active:
                    if k >= start + size:
                        rows = min(rows, (slots // (r * width)) * r - r + 1)
                groups.append(Group(start, size, width, rows))
        plans[name] = tuple(groups)
    return plans


def client_blocks(groups: Mapping[str, Sequence[Group]], rank: int, ks: Mapping[str, int], slots: int) -> list[Block]:
    """A client's blocks packed in order into ciphertexts of ``slots`` complex slots (no straddling)."""
    blocks, ct, offset = [], 0, 0
    for name in sorted(groups):
        for gi, g in enumerate(groups[name]):
            if g.end > ks.get(name, 0):
                continue
            size = rank * g.width
            if size > slots:
                raise ValueError(f"server lift: a rank-{rank} block of {g.width} lanes exceeds {slots} slots")
            if offset + size > slots:
                ct, offset = ct + 1, 0
            blocks.append(Block(name, gi, ct, offset, size))
            offset += size
    return blocks


def client_lift_order(shapes: Mapping[str, tuple[int, int]], k_max: Mapping[str, int]) -> list[tuple[str, int]]:
    """(module, j) entries sorted by j / n_module: every client's own entries form a prefix."""
    entries = [(name, j) for name in sorted(k_max) for j in range(k_max[name])]
    return sorted(entries, key=lambda e: (e[1] / shapes[e[0]][1], e[0], e[1]))
