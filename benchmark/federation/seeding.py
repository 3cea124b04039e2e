"""Every random stream of a run derives from one seed and a stream name, so a change in one stream
(say, more DP noise draws) never shifts another (the partition, the attack's restarts)."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive(seed: int, *names: object) -> int:
    """A 63-bit seed for the stream ``names`` (e.g. ``derive(0, "partition")``, ``derive(0, "init", 3)``)."""
    key = "/".join(str(n) for n in names).encode()
    words = np.frombuffer(hashlib.sha256(key).digest()[:16], dtype=np.uint32).tolist()
    return int(np.random.SeedSequence([seed, *words]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def rng(seed: int, *names: object) -> np.random.Generator:
    return np.random.default_rng(derive(seed, *names))


def torch_generator(seed: int, *names: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive(seed, *names))


def seed_everything(seed: int) -> None:
    """Seed the global generators too, for library code that draws from them (dropout, peft init)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
