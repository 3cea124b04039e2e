"""Precision that does not depend on the update's size (issue 13).

CKKS noise is absolute, so without scaling the relative error of a secure aggregate grows as updates
shrink (server_lift: 2.7e-5 at entries of 3.6e-7, 2.7e-3 at 3.6e-9). Each module's values are now scaled
by a public power of two before encoding and back after decryption; these tables check that the
relative error stays <= 1e-5 from entries of 1e-3 down to 1e-9, for SHE-LoRA in both lift modes and for
the packed primitive that full_he and maskcrypt use. Updates are float64 on one 64 x 64 module, so the
tolerance measures CKKS alone, not float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.asv_bench.rounds import build_round
from she_lora import ckks
from she_lora.lowrank import relative_error

MAGNITUDES = [1e-3, 1e-5, 1e-7, 1e-9]
TOLERANCE = 1e-5
SPEC = {"layers": 1, "modules": ("q_proj",), "dim": 64, "ranks": (4, 8, 8, 16), "budgets": (0.05, 0.1, 0.1, 0.2)}


@pytest.fixture(scope="module", params=["client_lift", "server_lift"])
def lift(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("magnitude", MAGNITUDES, ids=[f"{m:.0e}" for m in MAGNITUDES])
def test_she_lora_relative_error_is_size_independent(lift: str, magnitude: float) -> None:
    r = build_round(lift, SPEC, magnitude=magnitude, dtype=torch.float64)
    message = r.aggregate(r.protect_all())
    fused = r.finalize(message)
    ref = r.reference()
    for name, delta in fused.items():
        assert float(ref[name].abs().max()) == pytest.approx(magnitude, rel=1e-9)
        assert relative_error(delta.dense(), ref[name]) <= TOLERANCE


def test_client_lift_refuses_mixed_exponents() -> None:
    r = build_round("client_lift", SPEC, magnitude=1e-6, dtype=torch.float64)
    uploads = r.protect_all()
    r.exponents = {name: e + 1 for name, e in (r.exponents or {}).items()}
    uploads[0] = r.protect(0)
    with pytest.raises(ValueError, match="different exponents"):
        r.aggregate(uploads)


def test_exponents_travel_as_one_small_tensor(lift: str) -> None:
    r = build_round(lift, SPEC, magnitude=1e-8, dtype=torch.float64)
    r.agree()  # client_lift: the round's agreed exponents; server_lift: none needed
    plain, _, _ = r.protect(0)
    exps = plain["lift_exponents"]
    assert exps.dtype == torch.int64 and exps.shape == (1,)
    assert -40 < int(exps[0]) < 0  # a power of two of the values' size, nothing finer


# ---- the packed primitive (full_he, maskcrypt) ---------------------------------------------

CHAINS = {"lean": ckks.CKKSParams(coeff_mod_bit_sizes=(60, 60), scale_bits=50), "deep": ckks.CKKSParams()}


@pytest.fixture(scope="module", params=list(CHAINS))
def chain(request: pytest.FixtureRequest) -> tuple[str, ckks.CKKSContext, ckks.CKKSContext]:
    secret = ckks.make_secret_context(CHAINS[request.param])
    return request.param, secret, ckks.load_public_context(ckks.public_context_bytes(secret))


@pytest.mark.parametrize("magnitude", MAGNITUDES, ids=[f"{m:.0e}" for m in MAGNITUDES])
def test_packed_round_trip_and_sum(chain: tuple, magnitude: float) -> None:
    _, secret, server = chain
    rng = np.random.default_rng(0)
    xs = [rng.normal(0, magnitude, 5000) for _ in range(3)]
    e = ckks.agree_exponent([ckks.exponent_of(x) for x in xs], summands=len(xs))
    blobs = [ckks.encrypt_packed(secret, x, exponent=e) for x in xs]
    one = ckks.decrypt_packed(secret, blobs[0], 5000, exponent=e)
    assert relative_error(torch.from_numpy(one), torch.from_numpy(xs[0])) <= TOLERANCE
    total = ckks.decrypt_packed(secret, ckks.add_packed(server, blobs), 5000, exponent=e)
    assert relative_error(torch.from_numpy(total), torch.from_numpy(sum(xs))) <= TOLERANCE


@pytest.mark.parametrize("magnitude", MAGNITUDES, ids=[f"{m:.0e}" for m in MAGNITUDES])
def test_packed_weighted_sum_with_own_exponents(magnitude: float) -> None:
    """full_he's lift aggregation multiplies each payload by its weight anyway: clients may then use
    their own exponents e_i and the server folds 2^(e_i - E) into the weights (no agreement round)."""
    secret = ckks.make_secret_context(CHAINS["deep"])
    server = ckks.load_public_context(ckks.public_context_bytes(secret))
    rng = np.random.default_rng(1)
    xs = [rng.normal(0, magnitude * s, 3000) for s in (1.0, 0.01, 30.0)]
    weights = [0.5, 0.3, 0.2]
    own = [ckks.exponent_of(x) for x in xs]
    blobs = [ckks.encrypt_packed(secret, x, exponent=e) for x, e in zip(xs, own)]
    E = ckks.agree_exponent([ckks.exponent_of(w * x) for w, x in zip(weights, xs)], summands=len(xs))
    scaled = [ckks.mul_scalar_packed(server, b, w * 2.0 ** (e - E)) for b, w, e in zip(blobs, weights, own)]
    total = ckks.decrypt_packed(secret, ckks.add_packed(server, scaled), 3000, exponent=E)
    expect = sum(w * x for w, x in zip(weights, xs))
    assert relative_error(torch.from_numpy(total), torch.from_numpy(expect)) <= TOLERANCE


def test_without_an_exponent_small_values_lose_precision() -> None:
    """The failure the exponents fix (so the tables above are not vacuous): at 2^40, 1e-9 is noise."""
    secret = ckks.make_secret_context(CHAINS["deep"])
    x = np.random.default_rng(2).normal(0, 1e-9, 4000)
    plain = ckks.decrypt_packed(secret, ckks.encrypt_packed(secret, x), 4000)
    scaled = ckks.decrypt_packed(secret, ckks.encrypt_packed(secret, x, exponent=ckks.exponent_of(x)), 4000,
                                 exponent=ckks.exponent_of(x))
    assert relative_error(torch.from_numpy(plain), torch.from_numpy(x)) > 1e-4
    assert relative_error(torch.from_numpy(scaled), torch.from_numpy(x)) < 1e-8


@pytest.mark.parametrize(("values", "e"), [([0.5], -1), ([0.75], 0), ([1.0], 0), ([-3.0, 2.0], 2), ([1e-9], -29), ([], 0), ([0.0], 0)])
def test_exponent_of_is_the_smallest_bounding_power(values: list[float], e: int) -> None:
    assert ckks.exponent_of(np.array(values)) == e
    if values and max(abs(v) for v in values) > 0:
        assert max(abs(v) for v in values) <= 2.0**e and max(abs(v) for v in values) > 2.0 ** (e - 1)


def test_agree_exponent_leaves_room_for_the_sum() -> None:
    assert ckks.agree_exponent([-3, -7, -5]) == -3
    assert ckks.agree_exponent([-3, -7, -5], summands=3) == -1
    assert ckks.agree_exponent([0], summands=4) == 2
    with pytest.raises(ValueError, match="no proposals"):
        ckks.agree_exponent([])
    with pytest.raises(ValueError, match="NaN"):
        ckks.exponent_of(np.array([np.nan]))
