"""she_lora.ckks: packed round trips, server-side sums without the secret key, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from she_lora import ckks

LEAN = ckks.CKKSParams(coeff_mod_bit_sizes=(60, 60))


@pytest.fixture(scope="module")
def lean() -> ckks.CKKSContext:
    return ckks.make_secret_context(LEAN)


@pytest.fixture(scope="module")
def deep() -> ckks.CKKSContext:
    return ckks.make_secret_context(ckks.CKKSParams())


def test_round_trip_packs_two_reals_per_slot(lean: ckks.CKKSContext) -> None:
    x = np.random.default_rng(0).normal(0, 0.01, ckks.slots(lean) + 7)
    blobs = ckks.encrypt_packed(lean, torch.from_numpy(x).float())
    assert len(blobs) == 2 and ckks.slots(lean) == 8192
    y = ckks.decrypt_packed(lean, blobs, x.size)
    assert np.abs(y - x.astype(np.float32)).max() < 1e-7


def test_server_adds_but_cannot_decrypt(lean: ckks.CKKSContext) -> None:
    public = ckks.public_context_bytes(lean)
    server = ckks.load_public_context(public)
    assert not server.has_secret_key
    secret_part = ckks.secret_context_bytes(lean)[-4096:]
    assert secret_part not in public
    rng = np.random.default_rng(1)
    xs = [rng.normal(0, 0.01, 300) for _ in range(3)]
    total = ckks.add_packed(server, [ckks.encrypt_packed(lean, x) for x in xs])
    with pytest.raises(PermissionError, match="no secret key"):
        ckks.decrypt_packed(server, total, 300)
    with pytest.raises(PermissionError, match="no secret key"):
        ckks.encrypt_packed(server, xs[0])
    assert np.abs(ckks.decrypt_packed(lean, total, 300) - sum(xs)).max() < 1e-8


def test_secret_context_travels_to_other_clients(lean: ckks.CKKSContext) -> None:
    other_client = ckks.load_secret_context(ckks.secret_context_bytes(lean))
    x = np.linspace(-1, 1, 50)
    assert np.abs(ckks.decrypt_packed(other_client, ckks.encrypt_packed(lean, x), 50) - x).max() < 1e-8
    with pytest.raises(ValueError, match="public context"):
        ckks.load_secret_context(ckks.public_context_bytes(lean))
    with pytest.raises(ValueError, match="secret key"):
        ckks.load_public_context(ckks.secret_context_bytes(lean))


def test_contexts_survive_pickle_in_their_roles(deep: ckks.CKKSContext) -> None:
    """A client role pickles with its context (Flower's deployment keeps the role in a folder): the
    secret copy still decrypts, the public copy still adds and still refuses to decrypt."""
    import pickle

    secret = pickle.loads(pickle.dumps(deep))
    public = pickle.loads(pickle.dumps(ckks.load_public_context(ckks.public_context_bytes(deep))))
    assert secret.has_secret_key and not public.has_secret_key
    assert secret.fingerprint == public.fingerprint == deep.fingerprint
    x = np.linspace(-1, 1, 50)
    summed = ckks.add_packed(public, [ckks.encrypt_packed(deep, x), ckks.encrypt_packed(secret, x)])
    assert np.abs(ckks.decrypt_packed(secret, summed, 50) - 2 * x).max() < 1e-6
    with pytest.raises(PermissionError, match="no secret key"):
        ckks.decrypt_packed(public, summed, 50)


def test_scalar_product_keeps_scale(deep: ckks.CKKSContext) -> None:
    server = ckks.load_public_context(ckks.public_context_bytes(deep))
    x = np.random.default_rng(2).normal(0, 0.01, 1000)
    blobs = ckks.encrypt_packed(deep, x)
    halved = ckks.mul_scalar_packed(server, blobs, 0.5)
    mixed = ckks.add_packed(server, [halved, blobs])
    # a rescale at scale 2^40 rounds to ~5e-9 absolute (fresh encryption: ~1e-9)
    assert np.abs(ckks.decrypt_packed(deep, mixed, 1000) - 1.5 * x).max() < 5e-8


def test_ciphertext_from_another_context_is_refused(lean: ckks.CKKSContext) -> None:
    other = ckks.make_secret_context(LEAN)
    blobs = ckks.encrypt_packed(other, np.ones(4))
    with pytest.raises(ValueError, match="another CKKS context"):
        ckks.decrypt_packed(lean, blobs, 4)
    with pytest.raises(ValueError, match="another CKKS context"):
        ckks.add_packed(lean, [blobs, ckks.encrypt_packed(lean, np.ones(4))])
    with pytest.raises(ValueError, match="bad header"):
        ckks.decrypt_packed(lean, [b"garbage-bytes-here"], 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale_bits": 24}, "scale_bits"),
        ({"poly_modulus_degree": 1000}, "poly_modulus_degree"),
        ({"coeff_mod_bit_sizes": (60, 50, 60)}, "middle primes"),
        ({"coeff_mod_bit_sizes": (60, 40, 40, 40, 40, 60)}, "128-bit security"),
        ({"coeff_mod_bit_sizes": (45, 40, 45)}, "headroom|10 bits"),
        ({"coeff_mod_bit_sizes": (60, 60), "galois_keys": True}, "level"),
    ],
)
def test_bad_params_one_line_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        ckks.CKKSParams(**kwargs)
    assert "\n" not in str(info.value)


def test_bad_inputs(lean: ckks.CKKSContext) -> None:
    with pytest.raises(ValueError, match="1-D"):
        ckks.encrypt_packed(lean, np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        ckks.encrypt_packed(lean, np.array([np.nan]))
    with pytest.raises(ValueError, match="headroom"):
        ckks.encrypt_packed(lean, np.array([1e7]))
    with pytest.raises(ValueError, match="does not fit"):
        ckks.decrypt_packed(lean, ckks.encrypt_packed(lean, np.ones(3)), 10**6)
    with pytest.raises(ValueError, match="different ciphertext counts"):
        ckks.add_packed(lean, [ckks.encrypt_packed(lean, np.ones(3)), ckks.encrypt_packed(lean, np.ones(9000))])


def test_parallel_encryption_matches_serial(lean: ckks.CKKSContext) -> None:
    x = np.random.default_rng(3).normal(0, 0.01, 5 * ckks.slots(lean))
    blobs = ckks.encrypt_packed(lean, x, n_workers=2)
    assert np.abs(ckks.decrypt_packed(lean, blobs, x.size) - x).max() < 1e-8


def test_encryption_pool_lives_per_key_and_draws_fresh_randomness(lean: ckks.CKKSContext) -> None:
    """A round's encryptions share one pool (started once); another key gets its own; the same
    values encrypted twice give different ciphertexts (no copied PRNG state between calls or workers)."""
    x = np.random.default_rng(5).normal(0, 0.01, 4 * ckks.slots(lean))
    first = ckks.encrypt_packed(lean, x, n_workers=2)
    pool = ckks._ENCRYPT_POOL
    second = ckks.encrypt_packed(lean, x, n_workers=2)
    assert ckks._ENCRYPT_POOL is pool and pool is not None
    assert len(set(first) | set(second)) == len(first) + len(second)
    other = ckks.make_secret_context(LEAN)
    y = ckks.encrypt_packed(other, x, n_workers=2)
    assert ckks._ENCRYPT_POOL is not pool and ckks._ENCRYPT_POOL[0] == other.fingerprint
    for ctx, blobs in ((lean, second), (other, y)):
        assert np.abs(ckks.decrypt_packed(ctx, blobs, x.size) - x).max() < 1e-8
