"""Process-parallel encryption for large packed payloads (SEAL holds the GIL, threads do not help)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

_WORKER_CTX: Any = None


def _init(blob: bytes) -> None:
    global _WORKER_CTX
    from she_lora.ckks import load_secret_context

    _WORKER_CTX = load_secret_context(blob, galois=False)


def _encrypt_rows(chunks: np.ndarray) -> list[bytes]:
    return [_WORKER_CTX.encrypt_slots(c[0] + 1j * c[1]) for c in chunks]


def encrypt_parallel(ctx: Any, chunks: np.ndarray, n_workers: int) -> list[bytes]:
    """Split ``chunks`` (n_ct x 2 x N/2) into ``n_workers`` contiguous parts, encrypt each in a
    forked worker holding a copy of the clients' context, and keep the order."""
    from she_lora.ckks import secret_context_bytes

    parts = np.array_split(chunks, n_workers)
    mp = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(n_workers, mp_context=mp, initializer=_init, initargs=(secret_context_bytes(ctx),)) as ex:
        return [blob for part in ex.map(_encrypt_rows, parts) for blob in part]
