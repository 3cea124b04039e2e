"""The stages of SecAgg+ on Flower's own primitives: one function per stage and side, no engine.

The client functions follow flwr 1.42's ``secaggplus_mod`` (``_setup``, ``_share_keys``,
``_collect_masked_vectors``, ``_unmask``) and the server functions its ``SecAggPlusWorkflow``
(neighbour ring, forwarding of encrypted shares, unmasking), with flwr's pieces for everything that
is cryptography or arithmetic: ECDH key pairs (``flwr.supercore.primitives.asymmetric``), shared keys
and Fernet encryption of shares (``crypto.symmetric_encryption``), Shamir shares of the self-mask
seed and of the mask key (``crypto.shamir``), masks from ``secaggplus_utils.pseudo_rand_gen``,
stochastic quantization (``quantization``) and the modular ndarray helpers. Only the bookkeeping
(who holds which share) is written here, so that one process can play every client and the server
and a test can drop a client between any two stages.

Two properties of flwr's code carry over as they are: ``pseudo_rand_gen`` folds its seed to 32 bits
before seeding numpy (a mask has 2^32 possible streams), and ``quantize`` draws its stochastic
rounding from numpy's global generator, which ``quantize_seeded`` seeds per client and round and
restores, so runs stay reproducible.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_multiply,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

Arrays = list[np.ndarray]


class SecAggError(RuntimeError):
    """A round that secure aggregation cannot complete (too few clients left to unmask the sum)."""


@dataclass(frozen=True)
class RoundConfig:
    """One round's protocol settings, resolved for its participants (flwr's setup-stage config)."""

    num_shares: int  # neighbours of each client, itself included
    threshold: int  # shares needed to reconstruct a secret
    clipping_range: float
    quantization_range: int
    modulus_range: int
    max_weight: float


@dataclass
class ClientSession:
    """One client's state in one round (flwr's ``SecAggPlusState``)."""

    nid: int
    cfg: RoundConfig
    sk1: bytes
    pk1: bytes
    sk2: bytes
    pk2: bytes
    rd_seed: bytes = b""
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    ss2: dict[int, bytes] = field(default_factory=dict)
    rd_seed_shares: dict[int, bytes] = field(default_factory=dict)
    sk1_shares: dict[int, bytes] = field(default_factory=dict)
    available: list[int] = field(default_factory=list)  # neighbours whose shares arrived
    masked: bool = False
    round: int = 0  # the round whose upload these keys mask (0: an observation outside the rounds)


# ---- client stages ----------------------------------------------------------------------------


def advertise_keys(nid: int, cfg: RoundConfig) -> ClientSession:
    """Stage 0: two fresh ECDH key pairs, one for pairwise masks (1), one for encrypting shares (2)."""
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    return ClientSession(nid, cfg, private_key_to_bytes(sk1), public_key_to_bytes(pk1),
                         private_key_to_bytes(sk2), public_key_to_bytes(pk2))


def share_keys(s: ClientSession, public_keys: Mapping[int, tuple[bytes, bytes]]) -> tuple[list[int], list[bytes]]:
    """Stage 1: Shamir shares of a fresh self-mask seed and of sk1, one per neighbour, each
    encrypted under the key shared with that neighbour; returns (destinations, ciphertexts)."""
    s.public_keys = {int(k): (bytes(v[0]), bytes(v[1])) for k, v in public_keys.items()}
    if len(s.public_keys) < s.cfg.threshold:
        raise SecAggError(f"client {s.nid}: {len(s.public_keys)} neighbours, fewer than the threshold {s.cfg.threshold}")
    keys = [k for pair in s.public_keys.values() for k in pair]
    if len(set(keys)) != len(keys):
        raise SecAggError(f"client {s.nid}: two neighbours advertised the same public key")
    if s.public_keys.get(s.nid) != (s.pk1, s.pk2):
        raise SecAggError(f"client {s.nid}: the server forwarded wrong public keys for this client")
    s.rd_seed = os.urandom(32)
    b_shares = create_shares(s.rd_seed, s.cfg.threshold, s.cfg.num_shares)
    sk1_shares = create_shares(s.sk1, s.cfg.threshold, s.cfg.num_shares)
    dsts, cts = [], []
    for idx, (nid, (_, pk2)) in enumerate(s.public_keys.items()):
        if nid == s.nid:
            s.rd_seed_shares[nid], s.sk1_shares[nid] = b_shares[idx], sk1_shares[idx]
            continue
        key = generate_shared_key(bytes_to_private_key(s.sk2), bytes_to_public_key(pk2))
        s.ss2[nid] = key
        dsts.append(nid)
        cts.append(encrypt(key, share_keys_plaintext_concat(s.nid, nid, b_shares[idx], sk1_shares[idx])))
    return dsts, cts


def receive_shares(s: ClientSession, srcs: Sequence[int], cts: Sequence[bytes]) -> None:
    """Stage 2, first half: decrypt the shares the server forwarded and check who sent them."""
    if len(cts) + 1 < s.cfg.threshold:
        raise SecAggError(f"client {s.nid}: shares from {len(cts)} neighbours, fewer than threshold - 1")
    for src, ct in zip(srcs, cts, strict=True):
        actual, dst, b_share, sk1_share = share_keys_plaintext_separate(decrypt(s.ss2[int(src)], ct))
        if actual != src or dst != s.nid:
            raise SecAggError(f"client {s.nid}: a share from {actual} to {dst} arrived as one from {src}")
        s.rd_seed_shares[int(src)], s.sk1_shares[int(src)] = b_share, sk1_share
        s.available.append(int(src))


@contextlib.contextmanager
def quantize_seeded(seed: int) -> Iterator[None]:
    """flwr's ``quantize`` rounds with numpy's global generator: seed it here, restore it after."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def quantize_weighted(vectors: Arrays, weight: float, cfg: RoundConfig, seed: int,
                      privatize: Callable[[Arrays, float], Arrays] | None = None) -> Arrays:
    """``vectors`` scaled by weight / max_weight, clipped and quantized, the integer weight first
    (flwr's client-side weighting: the server divides the sum by the summed weights). ``privatize``
    (distributed DP) turns the weighted vectors, given their multiplier, into noisy ones before the
    clipping and quantization, so that the noise is summed under the masks like the update."""
    ratio = weight / cfg.max_weight
    if ratio > 1:
        raise ValueError(f"secagg.max_weight={cfg.max_weight:g} is below a client's sample count {weight:g}: the "
                         f"weighted sum could wrap around the modulus; use max_weight >= {weight:g}")
    q_ratio = round(ratio * cfg.quantization_range)
    weighted = parameters_multiply(vectors, q_ratio / cfg.quantization_range)
    if privatize is not None:
        weighted = privatize(weighted, q_ratio / cfg.quantization_range)
    with quantize_seeded(seed):
        quantized = quantize(weighted, cfg.clipping_range, cfg.quantization_range)
    return factor_combine(q_ratio, [q.astype(np.int64) for q in quantized])


def mask(s: ClientSession, quantized: Arrays) -> Arrays:
    """Stage 2, second half: the self mask and one pairwise mask per neighbour whose shares arrived,
    mod the modulus. A session masks once: a second vector under the same masks would give the
    server the difference of the two."""
    if s.masked:
        raise SecAggError(f"client {s.nid}: this round's masks were already used")
    s.masked = True
    dims = get_parameters_shape(quantized)
    out = parameters_addition(quantized, pseudo_rand_gen(s.rd_seed, s.cfg.modulus_range, dims))
    for nid in s.available:
        key = generate_shared_key(bytes_to_private_key(s.sk1), bytes_to_public_key(s.public_keys[nid][0]))
        pair = pseudo_rand_gen(key, s.cfg.modulus_range, dims)
        out = parameters_addition(out, pair) if s.nid > nid else parameters_subtraction(out, pair)
    return parameters_mod(out, s.cfg.modulus_range)


def one_time_mask(quantized: Arrays, cfg: RoundConfig) -> Arrays:
    """A vector masked outside any round's key agreement (an extra upload, e.g. an attack probe):
    under a fresh self mask that is never shared, nobody can remove it."""
    dims = get_parameters_shape(quantized)
    return parameters_mod(parameters_addition(quantized, pseudo_rand_gen(os.urandom(32), cfg.modulus_range, dims)),
                          cfg.modulus_range)


def unmask_shares(s: ClientSession, active: Sequence[int], dead: Sequence[int]) -> tuple[list[int], list[bytes]]:
    """Stage 3: the self-mask seed share of each surviving neighbour, the sk1 share of each dropped one."""
    if len(active) < s.cfg.threshold:
        raise SecAggError(f"client {s.nid}: {len(active)} surviving neighbours, fewer than the threshold {s.cfg.threshold}")
    nids = [int(n) for n in active] + [int(n) for n in dead]
    return nids, [s.rd_seed_shares[int(n)] for n in active] + [s.sk1_shares[int(n)] for n in dead]


# ---- server stages ----------------------------------------------------------------------------


def neighbours(ids: Sequence[int], num_shares: int, rng: np.random.Generator) -> dict[int, set[int]]:
    """SecAgg+'s ring: after a shuffle, each client's ``num_shares // 2`` neighbours on each side
    and itself (every participant when ``num_shares`` covers the round)."""
    order = [int(i) for i in rng.permutation(np.asarray(ids))]
    half = num_shares >> 1
    return {nid: {order[(i + off) % len(order)] for off in range(-half, half + 1)} for i, nid in enumerate(order)}


def forward_shares(sent: Mapping[int, tuple[Sequence[int], Sequence[bytes]]],
                   alive: Sequence[int]) -> dict[int, tuple[list[int], list[bytes]]]:
    """Route each encrypted share to its destination: destination -> (sources, ciphertexts)."""
    out: dict[int, tuple[list[int], list[bytes]]] = {int(n): ([], []) for n in alive}
    for src, (dsts, cts) in sent.items():
        for dst, ct in zip(dsts, cts, strict=True):
            if int(dst) in out:
                out[int(dst)][0].append(int(src))
                out[int(dst)][1].append(ct)
    return out


def unmask_sum(masked: Sequence[Arrays], shares: Mapping[int, Sequence[bytes]], active: Sequence[int],
               graph: Mapping[int, set[int]], public_keys: Mapping[int, tuple[bytes, bytes]],
               cfg: RoundConfig) -> Arrays:
    """The weighted mean of the survivors' vectors: sum the masked vectors, rebuild each survivor's
    self-mask seed and each dropped client's sk1 from the shares, remove their masks, dequantize and
    divide by the summed weights (flwr's unmask stage)."""
    total = [np.zeros_like(a) for a in masked[0]]
    for vec in masked:
        total = parameters_mod(parameters_addition(total, vec), cfg.modulus_range)
    dims = get_parameters_shape(total)
    alive = {int(n) for n in active}
    for nid, share_list in shares.items():
        if len(share_list) < cfg.threshold:
            raise SecAggError(f"{len(share_list)} shares of client {nid}'s secret arrived, fewer than the "
                              f"reconstruction threshold {cfg.threshold}: the round's sum cannot be unmasked")
        secret = combine_shares(list(share_list))
        if nid in alive:
            total = parameters_subtraction(total, pseudo_rand_gen(secret, cfg.modulus_range, dims))
            continue
        for other in (graph[nid] & alive) - {nid}:  # a pair of dropped clients masked nothing in the sum
            key = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(public_keys[other][0]))
            pair = pseudo_rand_gen(key, cfg.modulus_range, dims)
            total = parameters_addition(total, pair) if nid > other else parameters_subtraction(total, pair)
    q_total, values = factor_extract(parameters_mod(total, cfg.modulus_range))
    out = dequantize(values, cfg.clipping_range, cfg.quantization_range)
    offset = -(len(alive) - 1) * cfg.clipping_range
    return [(v + offset) * (cfg.quantization_range / float(q_total)) for v in out]
