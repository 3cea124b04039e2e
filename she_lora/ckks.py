"""CKKS for SHE-LoRA and the HE baselines: packed encryption, server-side sums, explicit key roles.

Built on SEAL through TenSEAL's bundled low-level bindings (``tenseal.sealapi``) rather than
TenSEAL's ``CKKSVector``, because three things the method needs are only reachable there:

- complex slots: every slot carries two reals (real and imaginary part), so a ciphertext holds N
  values instead of N/2 and uploads halve;
- seeded symmetric encryption: clients hold the secret key, so they may encrypt symmetrically, and
  SEAL then replaces half of each fresh ciphertext by a PRNG seed (another halving of uploads);
- rotations with a chosen, small set of Galois keys (positive powers of two only), which the
  server-side lift in ``she_lora.lift`` uses.

Key roles are explicit: ``make_secret_context`` creates the keys the clients share; the server only
ever holds ``load_public_context(public_context_bytes(ctx))``, which has neither the secret key nor a
public key, so it can add, multiply by plaintexts and rotate, but never decrypt or encrypt.

Every serialized ciphertext starts with a 4-byte magic and the 8-byte key fingerprint of its context,
so mixing ciphertexts of two contexts fails loudly instead of decrypting to noise.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tenseal.sealapi as seal

MAGIC_CT = b"SHC1"
MAGIC_CTX = b"SHK1"
_FP_LEN = 8
_MAX_BITS = {4096: 109, 8192: 218, 16384: 438, 32768: 881}  # 128-bit security (HE standard)


@dataclass(frozen=True)
class CKKSParams:
    """CKKS parameters. Defaults: N=8192, chain (60, 40, 40, 60), scale 2^40: two multiplicative
    levels (the server lift needs two; sums need none). ``(60, 60)`` is the lean additions-only chain.

    Middle primes must equal ``scale_bits`` so a rescale restores the scale, and the first prime
    must leave at least 10 bits of headroom above it. Scales below 2^30 are refused: with 2^24 a
    single plaintext multiply leaves about 8 bits of precision.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40
    galois_keys: bool = False

    def __post_init__(self) -> None:
        n, bits = self.poly_modulus_degree, tuple(self.coeff_mod_bit_sizes)
        if n not in _MAX_BITS:
            raise ValueError(f"ckks.poly_modulus_degree must be one of {sorted(_MAX_BITS)}, got {n}")
        if len(bits) < 2 or any(not 20 <= b <= 60 for b in bits):
            raise ValueError(f"ckks.coeff_mod_bit_sizes needs >= 2 primes of 20..60 bits, got {bits}")
        if sum(bits) > _MAX_BITS[n]:
            raise ValueError(f"ckks.coeff_mod_bit_sizes sum to {sum(bits)} bits, above {_MAX_BITS[n]} for N={n} (128-bit security)")
        if not 30 <= self.scale_bits <= 59:
            raise ValueError(f"ckks.scale_bits must be in [30, 59] (2^24 loses all precision), got {self.scale_bits}")
        if bits[0] - self.scale_bits < 10:
            raise ValueError(f"ckks: first prime ({bits[0]} bits) needs >= 10 bits above scale_bits={self.scale_bits}")
        if any(b != self.scale_bits for b in bits[1:-1]):
            raise ValueError(f"ckks: middle primes {bits[1:-1]} must equal scale_bits={self.scale_bits}")
        if self.galois_keys and len(bits) < 3:
            raise ValueError("ckks: galois_keys are only useful with a multiplicative level (>= 3 primes)")

    @property
    def levels(self) -> int:
        """Plaintext multiplications (with rescale) a fresh ciphertext affords."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def capacity(self) -> int:
        """Real values per ciphertext (two per complex slot)."""
        return self.poly_modulus_degree


class CKKSContext:
    """One keypair's SEAL objects. ``has_secret_key`` tells the two roles apart; the server's
    instance (from ``load_public_context``) has no encryptor and no decryptor at all."""

    def __init__(self, params: CKKSParams, key_id: bytes, secret_key: Any | None, galois: Any | None) -> None:
        self.params = params
        self.rotation_steps: tuple[int, ...] = ()
        self.fingerprint = hashlib.sha256(json.dumps(asdict(params)).encode() + key_id).digest()[:_FP_LEN]
        self._key_id = key_id
        enc_params = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        enc_params.set_poly_modulus_degree(params.poly_modulus_degree)
        enc_params.set_coeff_modulus(seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)))
        self.seal = seal.SEALContext(enc_params, True, seal.SEC_LEVEL_TYPE.TC128)
        self.encoder = seal.CKKSEncoder(self.seal)
        self.evaluator = seal.Evaluator(self.seal)
        self.scale = float(2**params.scale_bits)
        self.galois = galois
        self._secret_key = secret_key
        self._encryptor = seal.Encryptor(self.seal, secret_key) if secret_key is not None else None
        self._decryptor = seal.Decryptor(self.seal, secret_key) if secret_key is not None else None

    @property
    def has_secret_key(self) -> bool:
        return self._secret_key is not None

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        """Pickle as the context's own serialization (SEAL objects do not pickle): a client's copy keeps
        its secret key (whoever holds the pickle holds the key), the server's stays public-only."""
        if self.has_secret_key:
            return load_secret_context, (secret_context_bytes(self),)
        return load_public_context, (public_context_bytes(self),)

    @property
    def slot_count(self) -> int:
        return self.params.poly_modulus_degree // 2

    def primes(self, parms_id: Any) -> list[int]:
        return [q.value() for q in self.seal.get_context_data(parms_id).parms().coeff_modulus()]

    # -- low level, on SEAL objects (used by she_lora.lift) -------------------------------------
    def encode(self, slots: np.ndarray, parms_id: Any | None = None, scale: float | None = None) -> Any:
        """Plaintext of complex (or real) slot values at a level and scale (defaults: top, 2^scale_bits)."""
        pt = seal.Plaintext()
        values = np.asarray(slots)
        data = values.tolist() if np.iscomplexobj(values) else values.astype(np.float64, copy=False).tolist()
        self.encoder.encode(data, parms_id if parms_id is not None else self.seal.first_parms_id(), scale or self.scale, pt)
        return pt

    def encrypt_slots(self, slots: np.ndarray) -> bytes:
        """Seeded symmetric encryption of one ciphertext's complex slots, serialized with the header."""
        enc = self._require_secret("encrypt")
        return self._header() + _save(enc.encrypt_symmetric(self.encode(slots)))

    def decrypt_slots(self, ct: Any) -> np.ndarray:
        dec = self._require_secret("decrypt")
        pt = seal.Plaintext()
        dec.decrypt(ct, pt)
        return np.asarray(self.encoder.decode_complex(pt))

    def load_ct(self, blob: bytes) -> Any:
        """Check the header, then deserialize one ciphertext against this context."""
        if len(blob) <= len(MAGIC_CT) + _FP_LEN or blob[:4] != MAGIC_CT:
            raise ValueError("not a shebench CKKS ciphertext (bad header)")
        fp = blob[4 : 4 + _FP_LEN]
        if fp != self.fingerprint:
            raise ValueError(
                f"ciphertext belongs to another CKKS context (key fingerprint {fp.hex()} != {self.fingerprint.hex()})"
            )
        ct = seal.Ciphertext()
        _load(ct, self.seal, blob[4 + _FP_LEN :])
        return ct

    def dump_ct(self, ct: Any) -> bytes:
        return self._header() + _save(ct)

    def _header(self) -> bytes:
        return MAGIC_CT + self.fingerprint

    def _require_secret(self, what: str) -> Any:
        obj = self._encryptor if what == "encrypt" else self._decryptor
        if obj is None:
            raise PermissionError(f"cannot {what}: this CKKS context holds no secret key (server side)")
        return obj


# ---- contexts -------------------------------------------------------------------------------


def make_secret_context(params: CKKSParams | None = None, rotations: Sequence[int] = ()) -> CKKSContext:
    """Fresh keys for the clients (who all share them). Galois keys only when ``params.galois_keys``:
    left rotations by powers of two, plus the extra ``rotations`` steps a caller uses often."""
    params = params or CKKSParams()
    probe = CKKSContext(params, b"", None, None)
    keygen = seal.KeyGenerator(probe.seal)
    secret = keygen.secret_key()
    ctx = CKKSContext(params, os.urandom(16), secret, None)
    ctx.rotation_steps = tuple(sorted({int(r) % ctx.slot_count for r in rotations} - {0}))
    if params.galois_keys:
        ctx.galois = _galois_keys(ctx, keygen)
    return ctx


def galois_elt(ctx: CKKSContext, steps: int) -> int:
    """SEAL's Galois element for a left rotation by ``steps`` slots."""
    return pow(3, steps % ctx.slot_count, 2 * ctx.params.poly_modulus_degree)


def _galois_keys(ctx: CKKSContext, keygen: Any) -> Any:
    """Keys for left rotations by positive powers of two (half the default set: 17 MB, not 33 MB at
    N=8192; any left rotation is the sum of its binary digits) and by ``ctx.rotation_steps``."""
    steps = {1 << j for j in range(ctx.slot_count.bit_length() - 1)} | set(ctx.rotation_steps)
    elts = [galois_elt(ctx, s) for s in sorted(steps)]
    keys = seal.GaloisKeys()
    keygen.create_galois_keys(elts, keys)
    return keys


def secret_context_bytes(ctx: CKKSContext) -> bytes:
    """The clients' shared context (secret key included): never send this to the server."""
    if not ctx.has_secret_key:
        raise PermissionError("secret_context_bytes: this context holds no secret key")
    return _pack_context(ctx, {"sk": _save(ctx._secret_key)})


def public_context_bytes(ctx: CKKSContext) -> bytes:
    """What the server gets: parameters, the key fingerprint and Galois keys if any. No secret key
    and no public key: the server evaluates, it never encrypts or decrypts."""
    parts = {"gk": _save(ctx.galois)} if ctx.galois is not None else {}
    return _pack_context(ctx, parts)


def load_secret_context(blob: bytes, galois: bool = True) -> CKKSContext:
    """A client's copy of the shared keys; ``galois=False`` skips regenerating Galois keys (which
    only the server uses) when the copy will just encrypt and decrypt."""
    params, key_id, steps, parts = _unpack_context(blob)
    if "sk" not in parts:
        raise ValueError("load_secret_context: blob has no secret key (it is a public context)")
    probe = CKKSContext(params, key_id, None, None)
    secret = seal.SecretKey()
    _load(secret, probe.seal, parts["sk"])
    ctx = CKKSContext(params, key_id, secret, None)
    ctx.rotation_steps = steps
    if params.galois_keys and galois:
        ctx.galois = _galois_keys(ctx, seal.KeyGenerator(ctx.seal, secret))
    return ctx


def load_public_context(blob: bytes) -> CKKSContext:
    params, key_id, steps, parts = _unpack_context(blob)
    if "sk" in parts:
        raise ValueError("load_public_context: blob holds a secret key; the server must get public_context_bytes")
    ctx = CKKSContext(params, key_id, None, None)
    ctx.rotation_steps = steps
    if "gk" in parts:
        keys = seal.GaloisKeys()
        _load(keys, ctx.seal, parts["gk"])
        ctx.galois = keys
    return ctx


def slots(ctx: CKKSContext) -> int:
    """Real values one ciphertext holds: N (two per complex slot), not TenSEAL's N/2."""
    return ctx.params.capacity


def _pack_context(ctx: CKKSContext, parts: dict[str, bytes]) -> bytes:
    head = {"params": asdict(ctx.params), "steps": list(ctx.rotation_steps), "parts": {k: len(v) for k, v in parts.items()}}
    head = json.dumps(head).encode()
    return MAGIC_CTX + ctx._key_id + struct.pack("<I", len(head)) + head + b"".join(parts.values())


def _unpack_context(blob: bytes) -> tuple[CKKSParams, bytes, tuple[int, ...], dict[str, bytes]]:
    if blob[:4] != MAGIC_CTX:
        raise ValueError("not a shebench CKKS context blob (bad header)")
    key_id = blob[4:20]
    (n_head,) = struct.unpack("<I", blob[20:24])
    head = json.loads(blob[24 : 24 + n_head])
    raw = head["params"]
    params = CKKSParams(**{**raw, "coeff_mod_bit_sizes": tuple(raw["coeff_mod_bit_sizes"])})
    parts, pos = {}, 24 + n_head
    for name, size in head["parts"].items():
        parts[name] = blob[pos : pos + size]
        pos += size
    return params, key_id, tuple(head.get("steps", ())), parts


# ---- packed vectors ------------------------------------------------------------------------


def encrypt_packed(ctx: CKKSContext, values: Any, n_workers: int = 1, exponent: int = 0) -> list[bytes]:
    """Encrypt a 1-D float vector into ceil(len / slots(ctx)) ciphertexts (seeded, symmetric).

    Ciphertext c holds values[c*N : (c+1)*N]: the first N/2 in the real parts, the rest in the
    imaginary parts. ``exponent`` e encrypts values * 2^-e instead (exact in floating point; see
    ``exponent_of``): with e = exponent_of(values) every slot lies in [-1, 1], so CKKS's absolute
    noise becomes a relative error that no longer depends on the values' size. Decrypt with the
    same exponent. ``n_workers`` > 1 spreads ciphertexts over processes; SEAL holds the GIL, so
    threads do not help, and on 2 cores one worker is fastest for anything below ~100 ciphertexts.
    """
    flat = _as_vector(values, "encrypt_packed")
    if exponent:
        flat = np.ldexp(flat, -int(exponent))
    _check_magnitude(ctx, flat)
    cap, half = ctx.params.capacity, ctx.slot_count
    n_ct = -(-flat.size // cap)
    padded = np.zeros(n_ct * cap)
    padded[: flat.size] = flat
    chunks = padded.reshape(n_ct, 2, half)
    if n_workers > 1 and n_ct >= 2 * n_workers:
        return _encrypt_parallel(ctx, chunks, n_workers)
    return [ctx.encrypt_slots(c[0] + 1j * c[1]) for c in chunks]


def decrypt_packed(ctx: CKKSContext, blobs: Sequence[bytes], length: int, exponent: int = 0) -> np.ndarray:
    """Inverse of ``encrypt_packed`` (also for sums and scalar products of such payloads); pass the
    ``exponent`` the payloads were encrypted with (for a sum: the one all summands shared)."""
    cap = ctx.params.capacity
    if not 0 <= length <= len(blobs) * cap:
        raise ValueError(f"decrypt_packed: length {length} does not fit {len(blobs)} ciphertexts of {cap} values")
    parts = []
    for blob in blobs:
        z = ctx.decrypt_slots(ctx.load_ct(blob))
        parts.append(np.concatenate([z.real, z.imag]))
    out = np.concatenate(parts) if parts else np.zeros(0)
    out = out[:length]
    return np.ldexp(out, int(exponent)) if exponent else out


def exponent_of(values: Any) -> int:
    """The smallest e with |v| <= 2^e for every value (0 for an empty or all-zero input).

    A client that encrypts v * 2^-e puts every slot in [-1, 1]. What it reveals when it sends e:
    the power of two of its largest |value|, nothing finer (one integer per call). Powers of two
    keep the scaling exact in floating point.
    """
    arr = np.abs(np.asarray(values.detach().cpu().double().numpy() if hasattr(values, "detach") else values, dtype=np.float64))
    peak = float(arr.max()) if arr.size else 0.0
    if not np.isfinite(peak):
        raise ValueError("exponent_of: values contain NaN or inf")
    if peak == 0.0:
        return 0
    mantissa, e = math.frexp(peak)  # peak = mantissa * 2^e, 0.5 <= mantissa < 1
    return e - 1 if mantissa == 0.5 else e


def agree_exponent(proposals: Sequence[int], summands: int = 1) -> int:
    """The exponent every party uses when ciphertexts are added: the largest proposal plus
    ceil(log2(summands)), so a sum of ``summands`` payloads stays in [-1, 1] as well.

    Whoever computes it (the server, from the clients' ``exponent_of`` proposals) learns each
    proposal: the power of two of each client's largest |value|; every client learns the maximum.
    """
    if not proposals:
        raise ValueError("agree_exponent: no proposals")
    if summands < 1:
        raise ValueError(f"agree_exponent: summands must be >= 1, got {summands}")
    return int(max(proposals)) + (summands - 1).bit_length()


def add_packed(ctx: CKKSContext, payloads: Sequence[Sequence[bytes]], ragged: bool = False) -> list[bytes]:
    """Elementwise ciphertext sum of several clients' packed payloads (server side, no secret key).

    ``ragged=True`` accepts payloads of different lengths (prefix-packed vectors of different
    budgets): ciphertext c is the sum over the payloads that reach c.
    """
    if not payloads:
        raise ValueError("add_packed: nothing to add")
    lengths = {len(p) for p in payloads}
    if len(lengths) != 1 and not ragged:
        raise ValueError(f"add_packed: payloads have different ciphertext counts {sorted(lengths)}")
    out = []
    for c in range(max(lengths)):
        acc = None
        for blobs in payloads:
            if c < len(blobs):
                acc = add_into(ctx, acc, ctx.load_ct(blobs[c]))
        out.append(ctx.dump_ct(acc))
    return out


def add_into(ctx: CKKSContext, acc: Any | None, ct: Any) -> Any:
    """acc + ct in place (acc may be None); ciphertexts at different levels meet at the lower one."""
    if acc is None:
        return ct
    ev = ctx.evaluator
    if acc.parms_id() == ct.parms_id():
        ev.add_inplace(acc, ct)
        return acc
    level = {id(x): ctx.seal.get_context_data(x.parms_id()).chain_index() for x in (acc, ct)}
    if level[id(acc)] > level[id(ct)]:
        ev.mod_switch_to_inplace(acc, ct.parms_id())
    elif level[id(ct)] > level[id(acc)]:
        ev.mod_switch_to_inplace(ct, acc.parms_id())
    ev.add_inplace(acc, ct)
    return acc


def mul_scalar_packed(ctx: CKKSContext, blobs: Sequence[bytes], scalar: float) -> list[bytes]:
    """Each ciphertext times a plaintext scalar, then rescaled (uses one level). The scalar is
    encoded at the scale of the prime being dropped, so the result keeps its exact scale and can
    still be added to payloads that skipped the multiplication."""
    out = []
    for blob in blobs:
        ct = ctx.load_ct(blob)
        out.append(ctx.dump_ct(mul_plain_rescale(ctx, ct, np.full(ctx.slot_count, float(scalar)))))
    return out


def mul_plain_rescale(ctx: CKKSContext, ct: Any, slots_values: np.ndarray) -> Any:
    """ct * plaintext slots, rescaled with the scale preserved exactly (see ``mul_scalar_packed``)."""
    primes = ctx.primes(ct.parms_id())
    if len(primes) < 2:
        raise ValueError("ckks: no multiplicative level left (use coeff_mod_bit_sizes with a middle prime)")
    pt = ctx.encode(slots_values, ct.parms_id(), float(primes[-1]))
    out = seal.Ciphertext()
    ctx.evaluator.multiply_plain(ct, pt, out)
    ctx.evaluator.rescale_to_next_inplace(out)
    out.scale = ct.scale
    return out


def _as_vector(values: Any, where: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D vector, got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: values contain NaN or inf")
    return arr


def _check_magnitude(ctx: CKKSContext, flat: np.ndarray) -> None:
    limit = 2.0 ** (ctx.params.coeff_mod_bit_sizes[0] - ctx.params.scale_bits - 2)
    peak = float(np.abs(flat).max()) if flat.size else 0.0
    if peak >= limit:
        raise ValueError(f"ckks: |value| {peak:.3g} exceeds {limit:.3g}, the headroom of the first prime above the scale")


# ---- SEAL serialization (the bindings only save to and load from files) --------------------

_SCRATCH: Path | None = None
_COUNTER = itertools.count()
_SCRATCH_LOCK = threading.Lock()


def _scratch() -> Path:
    global _SCRATCH
    with _SCRATCH_LOCK:
        if _SCRATCH is None or not _SCRATCH.exists():
            base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            _SCRATCH = Path(tempfile.mkdtemp(prefix="shebench-ckks-", dir=base))
            atexit.register(shutil.rmtree, _SCRATCH, True)
        return _SCRATCH


def _tmp_path() -> str:
    return str(_scratch() / f"{os.getpid()}-{threading.get_ident()}-{next(_COUNTER)}.bin")


def _save(obj: Any) -> bytes:
    path = _tmp_path()
    try:
        obj.save(path)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        if os.path.exists(path):
            os.unlink(path)


def _load(obj: Any, seal_ctx: Any, data: bytes) -> None:
    path = _tmp_path()
    try:
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            obj.load(seal_ctx, path)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"ckks: cannot load SEAL object for this context: {exc}") from None
    finally:
        if os.path.exists(path):
            os.unlink(path)


def key_roles(params: CKKSParams) -> tuple[CKKSContext, CKKSContext, dict[str, float]]:
    """Keys for a defense whose clients share one secret context and whose server gets only the
    public bytes: (client context, server context, setup costs reported once)."""
    t0 = time.perf_counter()
    secret = make_secret_context(params)
    keygen_s = time.perf_counter() - t0
    public = public_context_bytes(secret)
    costs = {
        "keygen_s": keygen_s,
        "context_public_bytes": float(len(public)),
        "context_secret_bytes": float(len(secret_context_bytes(secret))),
    }
    return secret, load_public_context(public), costs


# ---- process-parallel encryption (SEAL holds the GIL, threads do not help) -------------------

_WORKER_CTX: CKKSContext | None = None


def _init_worker(blob: bytes) -> None:
    global _WORKER_CTX
    _WORKER_CTX = load_secret_context(blob, galois=False)


def _encrypt_rows(chunks: np.ndarray) -> list[bytes]:
    assert _WORKER_CTX is not None
    return [_WORKER_CTX.encrypt_slots(c[0] + 1j * c[1]) for c in chunks]


_ENCRYPT_POOL: tuple[bytes, int, ProcessPoolExecutor] | None = None  # (key fingerprint, workers, pool)


def _encrypt_pool(ctx: CKKSContext, n_workers: int) -> ProcessPoolExecutor:
    """One long-lived pool per secret key: its workers load the clients' context once (fresh SEAL
    randomness in each, never a copied PRNG state) and serve every later encryption under that key,
    so a round pays the start-up once instead of on every call. A new key replaces the pool."""
    global _ENCRYPT_POOL
    if _ENCRYPT_POOL is not None and _ENCRYPT_POOL[:2] == (ctx.fingerprint, n_workers):
        return _ENCRYPT_POOL[2]
    _shutdown_encrypt_pool()
    pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_init_worker, initargs=(secret_context_bytes(ctx),))
    _ENCRYPT_POOL = (ctx.fingerprint, n_workers, pool)
    return pool


@atexit.register
def _shutdown_encrypt_pool() -> None:
    global _ENCRYPT_POOL
    if _ENCRYPT_POOL is not None:
        _ENCRYPT_POOL[2].shutdown(wait=True, cancel_futures=True)
        _ENCRYPT_POOL = None


def _encrypt_parallel(ctx: CKKSContext, chunks: np.ndarray, n_workers: int) -> list[bytes]:
    """Split ``chunks`` (n_ct x 2 x N/2) into ``n_workers`` contiguous parts, encrypt each in a worker
    of the key's pool, and keep the order."""
    parts = np.array_split(chunks, n_workers)
    return [blob for part in _encrypt_pool(ctx, n_workers).map(_encrypt_rows, parts) for blob in part]
