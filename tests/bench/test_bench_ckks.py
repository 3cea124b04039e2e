"""CKKS micro-benchmarks (she_lora.ckks), op x size like TenSEAL's own benchmark tests.

Each case runs once as a plain test by default (``--benchmark-disable`` in pyproject) and is timed with
``make bench``. The serialized size of the payload goes into ``extra_info`` so a saved run records bytes
next to times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

ckks = pytest.importorskip("she_lora.ckks")

SIZES = [4096, 65536]  # one ciphertext (half full) and eight
OPS = ["encrypt", "decrypt", "serialize", "sum4"]


@pytest.fixture(scope="module")
def contexts() -> tuple[Any, Any]:
    secret = ckks.make_secret_context()
    return secret, ckks.load_public_context(ckks.public_context_bytes(secret))


def _op(name: str, secret: Any, server: Any, values: np.ndarray, blobs: list[bytes]) -> Callable[[], Any]:
    if name == "encrypt":
        return lambda: ckks.encrypt_packed(secret, values)
    if name == "decrypt":
        return lambda: ckks.decrypt_packed(secret, blobs, len(values))
    if name == "serialize":
        return lambda: [server.dump_ct(server.load_ct(b)) for b in blobs]
    return lambda: ckks.add_packed(server, [blobs] * 4)


@pytest.mark.benchmark(group="ckks")
@pytest.mark.parametrize("n_values", SIZES)
@pytest.mark.parametrize("op", OPS)
def test_ckks(benchmark: Any, contexts: tuple[Any, Any], op: str, n_values: int) -> None:
    secret, server = contexts
    values = np.random.default_rng(0).standard_normal(n_values) * 0.01
    blobs = ckks.encrypt_packed(secret, values)
    benchmark.extra_info.update(cipher_bytes=sum(len(b) for b in blobs), n_ciphertexts=len(blobs),
                                plain_bytes=values.size * 4)
    result = benchmark(_op(op, secret, server, values, blobs))
    if op == "decrypt":
        assert np.abs(result - values).max() < 1e-6
    elif op == "sum4":
        assert np.abs(ckks.decrypt_packed(secret, result, n_values) - 4 * values).max() < 1e-5
