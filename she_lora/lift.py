"""Server-side lift of encrypted A-columns: Enc(a) -> Enc(w s B a) for a whole band of modules at once.

The public code multiplies one small ciphertext per column by a (C r) x m plaintext matrix with
TenSEAL's ``mm`` (a rotation per input slot, ~0.2 s per column). Here a client's r x W block of a
band (see ``she_lora.layout``: row k holds A[k, :] of every unit of the band, W lanes, complex-packed)
is lifted for all its units, columns and rows at once:

1. mask the block out of the packed upload (one plaintext product; level 1);
2. tile it periodically over the ciphertext (period r W) by rotate-and-add doubling, so slot t W + l
   reads A[t mod r, l] (O(log(S / rW)) rotations);
3. for j = 0..r-1 rotate the tile by j W (so slot t W + l reads A[(t + j) mod r, l]) and multiply
   by the plaintext P_j[t W + l] = w s B_u[t0 + t, (t + j) mod r] (u: the unit owning lane l);
   summing over j gives, in slot t W + l, sum_k B_u[t0 + t, k] A_u[k, l]: rows t0..t0+T-1 of every
   unit's lifted columns (real and imaginary lanes at once).

A band with several planes (see ``she_lora.layout``) tiles and rotates each plane's block and
multiplies all of them by the same encoded P_j: encoding (an FFT and an NTT per prime) costs more
than the product itself. Rotations are paid per band, plane and client (about log2(S / rW) + r),
products per output ciphertext (r per client), and products of all clients are summed before one
rescale per output (level 2).
Rotations are left rotations by powers of two only (half the default Galois keys).

Magnitudes: client i encrypts its columns times 2^-e_i (``exponents``, public, see
``she_lora.ckks.exponent_of``) and the server, which holds every w_i s_i B_i in the clear, folds
2^e_i into its weights and divides them by 2^E per module, E being the exponent of the largest
possible |lifted entry| (the row sums of |w s B| 2^e over clients). Every output then lies in
[-1, 1] whatever the update's size, so CKKS's absolute noise is a fixed relative error; clients
multiply by 2^E (sent in the clear: it is computed from plaintext the server holds anyway).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from she_lora.ckks import CKKSContext, add_into, exponent_of
from she_lora.layout import Band, Block


def pack_blocks(columns: Mapping[str, np.ndarray], bands: Sequence[Band], blocks: Sequence[Block], slots: int) -> list[np.ndarray]:
    """Complex slot vectors of a client's upload; ``columns[name]`` is (r, k_i): global positions 0..k_i-1."""
    n_ct = max((b.ct for b in blocks), default=-1) + 1
    out = [np.zeros(slots, dtype=np.complex128) for _ in range(n_ct)]
    for blk in blocks:
        band = bands[blk.band]
        rank = blk.size // band.lanes
        rows = np.zeros((rank, band.lanes), dtype=np.complex128)
        for u in band.units:
            cols = np.asarray(columns[u.module][:, u.start : u.end], dtype=np.float64)
            lo = blk.plane * 2 * u.width  # this plane's columns of the unit: [lo, lo + 2 width)
            real, imag = cols[:, lo : lo + u.width], cols[:, lo + u.width : lo + 2 * u.width]
            rows[:, u.lane : u.lane + real.shape[1]].real = real
            rows[:, u.lane : u.lane + imag.shape[1]].imag = imag
        out[blk.ct][blk.offset : blk.offset + blk.size] = rows.reshape(-1)
    return out


@dataclass(frozen=True)
class LiftInput:
    """One client's contribution: its upload, its blocks, B per module, weight w_i s_i, and the
    exponents e_i its columns were encrypted with (values times 2^-e_i)."""

    blobs: Sequence[bytes]
    blocks: Sequence[Block]
    B: Mapping[str, np.ndarray]
    coef: float
    exponents: Mapping[str, int]


def output_exponents(inputs: Sequence[LiftInput], bands: Sequence[Band]) -> dict[str, int]:
    """Per module, the exponent E with |sum_i w_i s_i B_i a_i| <= 2^E for any |a_i| <= 2^e_i, over the
    clients that uploaded columns of the module (row sums of |w s B| 2^e: a bound, never exceeded)."""
    bounds: dict[str, np.ndarray] = {}
    for x in inputs:
        held = {u.module for blk in x.blocks for u in bands[blk.band].units}
        for name in sorted(held):
            rows = np.abs(np.asarray(x.B[name], dtype=np.float64)).sum(axis=1) * abs(x.coef) * 2.0 ** x.exponents.get(name, 0)
            bounds[name] = rows if name not in bounds else bounds[name] + rows
    return {name: exponent_of(bound) for name, bound in bounds.items()}


class ServerLift:
    """Accumulates sum_i Enc(2^-E w_i s_i B_i a_i) per band and output ciphertext; public context only.

    ``out_exponents`` (module -> E, from ``output_exponents``) scales the weights; without it E = 0
    and weights are used as given."""

    def __init__(self, ctx: CKKSContext, bands: Sequence[Band], shapes: Mapping[str, tuple[int, int]],
                 out_exponents: Mapping[str, int] | None = None, share: tuple[int, int] = (0, 1)) -> None:
        if ctx.galois is None or ctx.params.levels < 2:
            raise ValueError("server lift needs a context with Galois keys and two levels, e.g. (60, 40, 40, 60)")
        if not 0 <= share[0] < share[1]:
            raise ValueError(f"server lift: share {share} must be (index, parts) with 0 <= index < parts")
        self.ctx, self.bands, self.shapes = ctx, bands, shapes
        self.out_exponents = dict(out_exponents or {})
        self.share = share  # this lift computes the row windows h with h % parts == index
        self.slots = ctx.slot_count
        self._acc: dict[tuple[int, int, int], Any] = {}
        self._tmp = seal.Ciphertext()

    def add(self, x: LiftInput) -> None:
        self.add_client(x.blobs, x.blocks, x.B, x.coef, x.exponents)

    def add_client(self, blobs: Sequence[bytes], blocks: Sequence[Block], B: Mapping[str, np.ndarray], coef: float,
                   exponents: Mapping[str, int] | None = None) -> None:
        cts = [self.ctx.load_ct(b) for b in blobs]
        exps = exponents or {}
        by_band: dict[int, list[Block]] = {}
        for blk in blocks:
            by_band.setdefault(blk.band, []).append(blk)
        for bi, band_blocks in sorted(by_band.items()):
            band = self.bands[bi]
            if sorted(b.plane for b in band_blocks) != list(range(band.planes)):
                raise ValueError(f"server lift: band {bi} needs blocks for planes 0..{band.planes - 1}")
            weights = np.zeros((len(band.units), band.m, band_blocks[0].size // band.lanes))
            for i, u in enumerate(band.units):
                e = exps.get(u.module, 0) - self.out_exponents.get(u.module, 0)
                b = np.asarray(B[u.module], dtype=np.float64)
                weights[i, : b.shape[0]] = coef * 2.0**e * b
            self._lift_band(bi, band, [(cts[b.ct], b) for b in sorted(band_blocks, key=lambda b: b.plane)], weights)

    def finish(self) -> dict[int, list[bytes]]:
        """Rescale each summed output once; per band, outputs in (plane, row window) order."""
        return by_band(self.finish_keyed())

    def finish_keyed(self) -> dict[tuple[int, int, int], bytes]:
        """Each summed output rescaled once, keyed by (band, plane, row window)."""
        out = {}
        for key, ct in sorted(self._acc.items()):
            self.ctx.evaluator.rescale_to_next_inplace(ct)  # SEAL tracks the (shared) scale
            out[key] = self.ctx.dump_ct(ct)
        self._acc.clear()
        return out

    def _lift_band(self, bi: int, band: Band, planes: Sequence[tuple[Any, Block]], weights: np.ndarray) -> None:
        W, ctx, ev = band.lanes, self.ctx, self.ctx.evaluator
        rank = weights.shape[2]
        tiles = [self._tile_block(ct, blk) for ct, blk in planes]
        prime = float(ctx.primes(tiles[0].parms_id())[-1])
        T, n_out = band.rows, band.n_out
        # Lane-expanded weights, rows padded to n_out * T: by_lane[l, row, k] = weight of lane l's unit.
        lane_unit = np.full(W, len(band.units))
        for i, u in enumerate(band.units):
            lane_unit[u.lane : u.lane + u.width] = i
        padded = np.zeros((len(band.units) + 1, n_out * T, rank))
        padded[: len(band.units), : band.m] = weights
        by_lane = padded[lane_unit]
        t = np.arange(T)
        rows = (np.arange(n_out)[:, None] * T + t).reshape(-1)
        rotated = tiles
        for j in range(rank):
            if j:
                rotated = [self._rotl(x, W) for x in rotated]
            k = np.tile((t + j) % rank, n_out)
            plains = by_lane[:, rows, k].T.reshape(n_out, T * W)  # output h: slots t * W + l
            full = T * W == self.slots
            for h in range(self.share[0], n_out, self.share[1]):
                slots = plains[h] if full else np.concatenate([plains[h], np.zeros(self.slots - T * W)])
                pt = ctx.encode(slots, rotated[0].parms_id(), prime)  # one encoding serves every plane
                for p, x in enumerate(rotated):
                    key = (bi, p, h)
                    acc = self._acc.get(key)
                    if acc is None:
                        acc = self._acc[key] = seal.Ciphertext()
                        ev.multiply_plain(x, pt, acc)
                    else:
                        ev.multiply_plain(x, pt, self._tmp)
                        ev.add_inplace(acc, self._tmp)

    def _tile_block(self, ct: Any, blk: Block) -> Any:
        """The block masked out of its upload and repeated with period blk.size from slot 0."""
        S, ev = self.slots, self.ctx.evaluator
        # The mask carries 2^boost extra scale: after its rescale the block sits at 2^(scale_bits +
        # boost), so the key-switching noise of the rotations and the rounding of the final rescale
        # shrink by 2^boost.
        mask_pt = self.ctx.encode(self._mask(blk.offset, blk.size), ct.parms_id(), self._mask_scale(ct))
        masked = seal.Ciphertext()
        ev.multiply_plain(ct, mask_pt, masked)
        ev.rescale_to_next_inplace(masked)
        copies = S // blk.size
        return self._rotl(self._tile(masked, blk.size, copies), (blk.offset - (copies - 1) * blk.size) % S)

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


def decode_lift(ctx: CKKSContext, outputs: Mapping[int, Sequence[bytes]], bands: Sequence[Band],
                shapes: Mapping[str, tuple[int, int]], k_round: Mapping[str, int],
                out_exponents: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """The m x k_round lifted columns (global positions) per module, from the summed outputs of each
    band (band index -> ciphertexts in (plane, row window) order), times 2^E per module."""
    out = {name: np.zeros((shapes[name][0], k)) for name, k in k_round.items() if k}
    for bi, blobs in outputs.items():
        band = bands[bi]
        if len(blobs) != band.planes * band.n_out:
            raise ValueError(f"server lift: band {bi} has {len(blobs)} output ciphertexts, its layout needs {band.planes * band.n_out}")
        units = [u for u in band.units if u.module in out and u.end <= out[u.module].shape[1]]
        if not units:
            continue
        for plane in range(band.planes):
            # The plane's rows stacked over its row windows: z[row, lane].
            windows = blobs[plane * band.n_out : (plane + 1) * band.n_out]
            z = np.concatenate([ctx.decrypt_slots(ctx.load_ct(blob))[: band.rows * band.lanes] for blob in windows])
            z = z.reshape(-1, band.lanes)[: band.m]
            for u in units:
                lo = u.start + plane * 2 * u.width
                n_real = max(0, min(u.width, u.end - lo))
                n_imag = max(0, min(u.width, u.end - lo - u.width))
                dest = out[u.module]
                dest[:, lo : lo + n_real] = z[: dest.shape[0], u.lane : u.lane + n_real].real
                dest[:, lo + u.width : lo + u.width + n_imag] = z[: dest.shape[0], u.lane : u.lane + n_imag].imag
    for name, e in (out_exponents or {}).items():
        if name in out and e:
            out[name] *= 2.0**e
    return out


def by_band(outputs: Mapping[tuple[int, int, int], bytes]) -> dict[int, list[bytes]]:
    """Outputs keyed by (band, plane, row window) as per-band lists in (plane, row window) order."""
    out: dict[int, list[bytes]] = {}
    for (band, _, _), blob in sorted(outputs.items()):
        out.setdefault(band, []).append(blob)
    return out


# ---- process-parallel lift (row windows spread over forked workers) ---------------------------

_FORKED: tuple | None = None  # (context, bands, shapes, exponents, inputs), inherited by forked workers


def _lift_share(share: tuple[int, int]) -> dict[tuple[int, int, int], bytes]:
    """Worker: the row windows of ``share`` of every band, summed over every client."""
    assert _FORKED is not None
    ctx, bands, shapes, exponents, inputs = _FORKED
    lift = ServerLift(ctx, bands, shapes, exponents, share)
    for x in inputs:
        lift.add(x)
    return lift.finish_keyed()


def lift_parallel(ctx: CKKSContext, bands: Sequence[Band], shapes: Mapping[str, tuple[int, int]], inputs: Sequence[LiftInput],
                  out_exponents: Mapping[str, int], n_workers: int) -> dict[int, list[bytes]]:
    """The server lift with each band's row windows dealt round-robin to ``n_workers`` forked
    processes (a round usually has a single band, so splitting by band would leave workers idle).
    Each worker tiles the clients' blocks itself (a few rotations) and computes only its outputs, the
    encodings and products that dominate; outputs never mix across workers. The workers inherit the
    public context and the inputs by fork, so nothing but the output ciphertexts is serialized."""
    global _FORKED
    mp = multiprocessing.get_context("fork")
    _FORKED = (ctx, bands, shapes, dict(out_exponents), list(inputs))
    try:
        with ProcessPoolExecutor(n_workers, mp_context=mp) as ex:
            parts = list(ex.map(_lift_share, [(w, n_workers) for w in range(n_workers)]))
    finally:
        _FORKED = None
    return by_band({key: blob for part in parts for key, blob in part.items()})
