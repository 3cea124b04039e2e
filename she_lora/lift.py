"""Server-side lift of encrypted A-columns: Enc(a) -> Enc(w s B a), with no matrix transform per column.

The public code multiplies one small ciphertext per column by a (C r) x m plaintext matrix with
TenSEAL's ``mm`` (a rotation per input slot, ~0.2 s per column). Here a client's r x C block of a
column group (complex-packed: C' = ceil(C/2) lanes, slot k C' + c) is lifted for all its columns and
all m rows at once:

1. mask the block out of the packed upload (one plaintext product; level 1);
2. tile it periodically over the ciphertext, n = floor(S / (r C')) copies, by rotate-and-add
   doubling (O(log n) rotations);
3. for j = 0..r-1 rotate the tile by j C' (so slot s = t C' + c reads A[(t + j) mod r, c]) and
   multiply by the plaintext P_j[s] = w s B[t0 + t, (t + j) mod r]; summing over j gives, in slot
   t C' + c, sum_k B[t0 + t, k] A[k, c]: rows t0..t0+T-1 of the lifted columns (real and imaginary
   lanes at once). T <= n r - r + 1 keeps every read inside the tile.

Cost per block: 1 product + ~log2(n) + r rotations + r products per output ciphertext, and products of
all clients are summed before a single rescale per output (level 2). Rotations are left rotations by
powers of two only (half the default Galois keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from she_lora.ckks import CKKSContext, add_into
from she_lora.layout import Block, Group


def pack_blocks(
    columns: Mapping[str, np.ndarray], groups: Mapping[str, Sequence[Group]], blocks: Sequence[Block], slots: int
) -> list[np.ndarray]:
    """Complex slot vectors of a client's upload; ``columns[name]`` is (r, k_i): global positions 0..k_i-1."""
    n_ct = max((b.ct for b in blocks), default=-1) + 1
    out = [np.zeros(slots, dtype=np.complex128) for _ in range(n_ct)]
    for b in blocks:
        g = groups[b.module][b.group]
        blk = np.asarray(columns[b.module][:, g.start : g.end], dtype=np.float64)
        lanes = np.zeros((blk.shape[0], g.width), dtype=np.complex128)
        lanes.real = blk[:, : g.width]
        lanes.imag[:, : g.size - g.width] = blk[:, g.width :]
        out[b.ct][b.offset : b.offset + b.size] = lanes.reshape(-1)
    return out


class ServerLift:
    """Accumulates sum_i Enc(w_i s_i B_i a_ij) per output ciphertext; public context only."""

    def __init__(self, ctx: CKKSContext, groups: Mapping[str, Sequence[Group]], shapes: Mapping[str, tuple[int, int]]) -> None:
        if ctx.galois is None or ctx.params.levels < 2:
            raise ValueError("server lift needs a context with Galois keys and two levels, e.g. (60, 40, 40, 60)")
        self.ctx, self.groups, self.shapes = ctx, groups, shapes
        self.slots = ctx.slot_count
        self._acc: dict[tuple[str, int, int], Any] = {}
        self._masks: dict[tuple[int, int], Any] = {}

    def add_client(self, blobs: Sequence[bytes], blocks: Sequence[Block], B: Mapping[str, np.ndarray], coef: float) -> None:
        cts = [self.ctx.load_ct(b) for b in blobs]
        for blk in blocks:
            g = self.groups[blk.module][blk.group]
            weights = coef * np.asarray(B[blk.module], dtype=np.float64)
            self._lift_block(cts[blk.ct], blk, g, weights)

    def finish(self) -> dict[str, list[bytes]]:
        """Rescale each summed output once; per module, outputs in (group, row window) order."""
        out: dict[str, list[bytes]] = {}
        for (name, _, _), ct in sorted(self._acc.items()):
            self.ctx.evaluator.rescale_to_next_inplace(ct)  # SEAL tracks the (shared) scale
            out.setdefault(name, []).append(self.ctx.dump_ct(ct))
        self._acc.clear()
        return out

    def _lift_block(self, ct: Any, blk: Block, g: Group, weights: np.ndarray) -> None:
        m, r = weights.shape
        S, width, ctx, ev = self.slots, g.width, self.ctx, self.ctx.evaluator
        # The mask carries 2^boost extra scale: after its rescale the block sits at 2^(scale_bits +
        # boost), so the key-switching noise of the rotations (~3e-7 at 2^40) and the rounding of
        # the final rescale (~5e-9 at 2^40) shrink by 2^boost; lifted values are often ~1e-5.
        mask_pt = ctx.encode(self._mask(blk.offset, blk.size), ct.parms_id(), self._mask_scale(ct))
        masked = seal.Ciphertext()
        ev.multiply_plain(ct, mask_pt, masked)
        ev.rescale_to_next_inplace(masked)
        copies = S // blk.size
        w = self._rotl(self._tile(masked, blk.size, copies), (blk.offset - (copies - 1) * blk.size) % S)
        prime = float(ctx.primes(w.parms_id())[-1])
        for j in range(r):
            if j:
                w = self._rotl(w, width)
            for h in range(g.n_out(m)):
                t0 = h * g.rows
                rows = np.arange(t0, min(m, t0 + g.rows))
                slots = np.zeros(S)
                slots[: rows.size * width] = np.repeat(weights[rows, (rows - t0 + j) % r], width)
                prod = seal.Ciphertext()
                ev.multiply_plain(w, ctx.encode(slots, w.parms_id(), prime), prod)
                key = (blk.module, blk.group, h)
                self._acc[key] = add_into(ctx, self._acc.get(key), prod)

    def _mask_scale(self, ct: Any) -> float:
        p = self.ctx.params
        boost = max(0, min(10, p.coeff_mod_bit_sizes[0] - p.scale_bits - 10))
        return float(self.ctx.primes(ct.parms_id())[-1]) * 2.0**boost

    def _mask(self, offset: int, size: int) -> np.ndarray:
        mask = np.zeros(self.slots)
        mask[offset : offset + size] = 1.0
        return mask

    def _tile(self, y: Any, size: int, copies: int) -> Any:
        """sum_{j < copies} rotl(y, j * size), by doubling."""
        result, covered, power, span = None, 0, y, 1
        while copies:
            if copies & 1:
                term = self._rotl(power, covered * size)
                result = self._copy(term) if result is None else add_into(self.ctx, result, term)
                covered += span
            copies >>= 1
            if copies:
                power = self._add(power, self._rotl(power, span * size))
                span *= 2
        return result

    def _add(self, a: Any, b: Any) -> Any:
        out = seal.Ciphertext()
        self.ctx.evaluator.add(a, b, out)
        return out

    def _copy(self, ct: Any) -> Any:
        out = seal.Ciphertext()
        self.ctx.evaluator.mod_switch_to(ct, ct.parms_id(), out)
        return out

    def _rotl(self, ct: Any, steps: int) -> Any:
        """Left rotation as a product of power-of-two rotations (the only keys the server has).
        Returns ``ct`` itself for a zero rotation: callers never modify the result in place."""
        steps %= self.slots
        if steps and steps in self.ctx.rotation_steps:
            out = seal.Ciphertext()
            self.ctx.evaluator.rotate_vector(ct, steps, self.ctx.galois, out)
            return out
        out = ct
        bit = 0
        while steps:
            if steps & 1:
                nxt = seal.Ciphertext()
                self.ctx.evaluator.rotate_vector(out, 1 << bit, self.ctx.galois, nxt)
                out = nxt
            steps >>= 1
            bit += 1
        return out


def rotation_steps(groups: Mapping[str, Sequence[Group]]) -> list[int]:
    """Extra Galois keys worth generating: one per lane width (each used r - 1 times per block)."""
    return sorted({g.width for gs in groups.values() for g in gs if g.width & (g.width - 1)})


def decode_lift(
    ctx: CKKSContext, blobs: Sequence[bytes], groups: Sequence[Group], m: int, k_round: int
) -> np.ndarray:
    """The m x k_round lifted columns (global positions) from a module's summed output ciphertexts."""
    out = np.zeros((m, k_round))
    it = iter(blobs)
    for g in groups:
        if g.end > k_round:
            break
        for h in range(g.n_out(m)):
            z = ctx.decrypt_slots(ctx.load_ct(next(it)))
            t0 = h * g.rows
            n_rows = min(g.rows, m - t0)
            zz = z[: n_rows * g.width].reshape(n_rows, g.width)
            out[t0 : t0 + n_rows, g.start : g.start + g.width] = zz.real
            out[t0 : t0 + n_rows, g.start + g.width : g.end] = zz.imag[:, : g.size - g.width]
    return out


