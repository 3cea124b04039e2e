"""Where every encrypted value sits, decided once per federation so that all clients agree.

Two layouts, one per lift mode:

- client lift: each client encrypts whole lifted columns (m values each). Entries (module, j) are
  ordered by j / n_module, so every client's set {j < k_i} is a prefix of the order (k_i = ceil(b_i n)
  is monotone in the budget) and the server sums ciphertext c of every client that reaches it.
- server lift: the encrypted A-columns are cut into *units*: runs of global-list positions of one
  module between two budget tiers (a client holds all of a unit or none of it). Units of modules
  with the same row count and the same holders share a *band*: ``planes`` ciphertext rows of
  ``lanes`` slots (a power of two) where each unit owns ``width`` lanes in every plane; a plane's
  lane holds two columns (real and imaginary part). A client uploads, per band and plane, its
  r x lanes block (row k holds A[k, :] of every unit); the server lifts the whole band at once into
  output ciphertexts of ``rows`` rows per plane (see ``she_lora.lift``): rotations are paid per
  band and plane, not per module, and one encoded weight plaintext serves every plane.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Rough costs (ms, N = 8192, two primes) that pick a band layout: encoding a weight plaintext,
# a plaintext product plus its addition, a rotation, and masking a block out of an upload.
_ENCODE_MS, _PRODUCT_MS, _ROTATION_MS, _MASK_MS = 0.75, 0.3, 2.4, 2.5


@dataclass(frozen=True)
class Unit:
    """Global-list positions [start, start + size) of ``module`` at lanes [lane, lane + width) of
    every plane of its band. Column c sits in plane c // (2 width), at lane c % width, in the real
    part when c % (2 width) < width, else in the imaginary part."""

    module: str
    start: int
    size: int
    lane: int = 0
    width: int = 1

    @property
    def end(self) -> int:
        return self.start + self.size

    def place(self, c: int) -> tuple[int, int, bool]:
        """(plane, lane within the band, is-real) of the unit's column c."""
        q = c % (2 * self.width)
        return c // (2 * self.width), self.lane + q % self.width, q < self.width


@dataclass(frozen=True)
class Band:
    """Units lifted together: output ciphertext (p, h) holds, at slot t * lanes + unit.lane + c, row
    h * rows + t of plane p's lane c (rows of all units: ``m``)."""

    units: tuple[Unit, ...]
    lanes: int
    rows: int
    m: int
    planes: int = 1

    @property
    def n_out(self) -> int:
        """Output ciphertexts per plane."""
        return -(-self.m // self.rows)

    def held_by(self, ks: Mapping[str, int]) -> bool:
        return all(ks.get(u.module, 0) >= u.end for u in self.units)


@dataclass(frozen=True)
class Block:
    """One client's upload block of plane ``plane`` of band ``band``: slots [offset, offset + size) of
    ciphertext ``ct``."""

    band: int
    ct: int
    offset: int
    size: int
    plane: int = 0


def band_rows(slots: int, lanes: int, rank: int) -> int:
    """Output rows a rank-``rank`` client's tile supports at this lane count: all slots // lanes
    when the r-row tile repeats exactly around the ciphertext, else the rows whose r reads stay
    inside the whole copies."""
    period = rank * lanes
    if period > slots:
        return 0
    if slots % period == 0:
        return slots // lanes
    return (slots // period) * rank - rank + 1


def server_lift_bands(
    shapes: Mapping[str, tuple[int, int]], clients: Sequence[tuple[int, Mapping[str, int]]], slots: int,
    planes: int | None = None,
) -> tuple[Band, ...]:
    """Bands for every client's (rank, {module: k}); ``slots`` = complex slots per ciphertext.
    ``planes`` forces that many planes per band (a power of two; default: cheapest by estimate)."""
    active = [(r, ks) for r, ks in clients if any(k > 0 for k in ks.values())]
    if not active:
        return ()
    r_max = max(r for r, _ in active)
    if r_max > slots:
        raise ValueError(f"server lift: rank {r_max} exceeds {slots} slots")
    cap = max(1, slots // (4 * r_max))  # lanes per unit and plane: a block stays <= slots / 4
    classes: dict[tuple[int, tuple[int, ...]], list[tuple[str, int, int]]] = {}
    for name in sorted(shapes):
        ks = [k.get(name, 0) for _, k in active]
        bounds = sorted({0} | {k for k in ks if k > 0})
        for lo, hi in zip(bounds, bounds[1:]):
            holders = tuple(i for i, k in enumerate(ks) if k >= hi)
            classes.setdefault((shapes[name][0], holders), []).append((name, lo, hi - lo))
    bands: list[Band] = []
    for (m, holders), runs in sorted(classes.items(), key=lambda kv: (kv[1][0][0], kv[1][0][1])):
        bands.extend(_pack_class(runs, m, [active[i][0] for i in holders], slots, cap, planes))
    return tuple(bands)


def _pack_class(runs: list[tuple[str, int, int]], m: int, ranks: list[int], slots: int, cap: int,
                forced: int | None = None) -> list[Band]:
    """Pack one class (same rows, same holders) into bands: the plane count and lane count with the
    lowest estimated cost."""
    best: tuple[float, list[Band]] | None = None
    widest = max(size for _, _, size in runs)
    planes = forced or 1
    while True:
        units = _units(runs, planes, cap)
        lanes = 1 << (max(u.width for u in units) - 1).bit_length()
        while max(ranks) * lanes <= slots:
            bands = _pack(units, lanes, m, ranks, slots, planes)
            if bands is not None:
                cost = sum(_band_cost(b, ranks, slots) for b in bands)
                if best is None or cost < best[0]:
                    best = (cost, bands)
            lanes *= 2
        if forced or 2 * planes >= widest:  # more planes would only leave planes empty
            break
        planes *= 2
    if best is None:
        raise ValueError(f"server lift: no band layout fits {slots} slots for ranks {sorted(set(ranks))}")
    return best[1]


def _units(runs: list[tuple[str, int, int]], planes: int, cap: int) -> list[Unit]:
    """Cut runs into units of at most ``cap`` lanes per plane (2 cap planes columns)."""
    out = []
    per = 2 * cap * planes
    for name, lo, size in runs:
        for start in range(lo, lo + size, per):
            n = min(per, lo + size - start)
            out.append(Unit(name, start, n, 0, -(-n // (2 * planes))))
    return out


def _pack(units: list[Unit], lanes: int, m: int, ranks: list[int], slots: int, planes: int) -> list[Band] | None:
    groups: list[list[Unit]] = [[]]
    used = 0
    for u in units:
        if used + u.width > lanes:
            groups.append([])
            used = 0
        groups[-1].append(Unit(u.module, u.start, u.size, used, u.width))
        used += u.width
    out = []
    for i, g in enumerate(groups):
        width = lanes if i < len(groups) - 1 else 1 << (sum(u.width for u in g) - 1).bit_length()
        rows = min([band_rows(slots, width, r) for r in ranks] + [m])
        if rows < 1:
            return None
        used = max(-(-u.size // (2 * u.width)) for u in g)  # planes no unit reaches are dropped
        out.append(Band(tuple(g), width, rows, m, min(planes, used)))
    return out


def _band_cost(band: Band, ranks: list[int], slots: int) -> float:
    cost = 0.0
    for r in ranks:
        copies = slots // (r * band.lanes)
        rotations = copies.bit_length() + bin(copies).count("1") + r
        cost += band.planes * (_MASK_MS + _ROTATION_MS * rotations)
        cost += r * band.n_out * (_ENCODE_MS + band.planes * _PRODUCT_MS)
    return cost


def client_blocks(bands: Sequence[Band], rank: int, ks: Mapping[str, int], slots: int) -> list[Block]:
    """A client's blocks (r x lanes slots per band it holds and plane), packed in order into
    ciphertexts of ``slots`` complex slots without straddling."""
    blocks, ct, offset = [], 0, 0
    for bi, band in enumerate(bands):
        if not band.held_by(ks):
            continue
        size = rank * band.lanes
        if size > slots:
            raise ValueError(f"server lift: a rank-{rank} block of {band.lanes} lanes exceeds {slots} slots")
        for plane in range(band.planes):
            if offset + size > slots:
                ct, offset = ct + 1, 0
            blocks.append(Block(bi, ct, offset, size, plane))
            offset += size
    return blocks


def client_lift_order(shapes: Mapping[str, tuple[int, int]], k_max: Mapping[str, int]) -> list[tuple[str, int]]:
    """(module, j) entries sorted by j / n_module: every client's own entries form a prefix."""
    entries = [(name, j) for name in sorted(k_max) for j in range(k_max[name])]
    return sorted(entries, key=lambda e: (e[1] / shapes[e[0]][1], e[0], e[1]))
