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


def _lift_modules(args: tuple) -> dict[str, list[bytes]]:
    """Worker: lift a subset of modules for every client, with its own copy of the public context."""
    from she_lora.ckks import load_public_context
    from she_lora.lift import ServerLift

    public, groups, shapes, clients = args
    lift = ServerLift(load_public_context(public), groups, shapes)
    for blobs, blocks, B, coef in clients:
        lift.add_client(blobs, blocks, B, coef)
    return lift.finish()


def lift_parallel(public: bytes, groups: Any, shapes: Any, clients: list[tuple], n_workers: int) -> dict[str, list[bytes]]:
    """Server lift with modules spread over ``n_workers`` forked processes. ``clients`` holds
    (blobs, blocks, B per module, coef); outputs of a module never mix across workers, so each worker
    sums its modules over all clients and rescales them itself."""
    names = sorted(groups)
    parts = [names[i::n_workers] for i in range(n_workers)]
    jobs = []
    for part in parts:
        keep = set(part)
        sub = [(blobs, [b for b in blocks if b.module in keep], {n: B[n] for n in keep}, coef) for blobs, blocks, B, coef in clients]
        jobs.append((public, {n: groups[n] for n in part}, {n: shapes[n] for n in part}, sub))
    mp = multiprocessing.get_context("fork")
    out: dict[str, list[bytes]] = {}
    with ProcessPoolExecutor(n_workers, mp_context=mp) as ex:
        for res in ex.map(_lift_modules, jobs):
            out.update(res)
    return out
