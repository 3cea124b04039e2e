"""Distributed DP: ``dp`` over a defense whose server sees only the round's sum (``dp+secagg``).

The production recipe (DP-FedAvg under secure aggregation): each participant clips its own update
and adds only a share of the Gaussian noise, N(0, sigma^2 C^2 / m) per coordinate, so that the sum
the server unmasks carries noise of std at least ``sigma * C``, as if a trusted server had added it
(central DP), while no party ever sees one client's update, noisy or not.

Where the noise enters. ``secagg`` sums weighted dense deltas ``w_i s_i B_i A_i`` (``w_i = q_i / T``,
Flower's client-side weighting by sample count over ``max_weight``), so that is the space the noise
must live in: the factors' product is not linear in noise added to A and B. Each client takes the
change of its weighted dense delta from the public start, ``w_i (s B A - s B0 A0)``, clips it to L2
norm ``w_i C`` over all modules jointly (the unweighted dense change to C: ``dp.clip`` keeps one
meaning whatever ``max_weight`` is), adds its noise share, and only then does secagg clip entries to
``clipping_range``, quantize and mask: noise before quantization, so quantization is post-processing
of a noisy vector. The range must hold the noise, or the quantizer's clipping would cut the Gaussian
tails the accounting relies on: ``check_inner`` refuses, before any work, a range below
``C + 7 * sigma C / sqrt(m)`` (7 standard deviations: one entry in 4e11 exceeds it).

How many shares: ``m`` is the smallest number of uploads a released sum can hold, which is secagg's
reconstruction threshold (the server refuses to unmask fewer survivors; the round then fails and
releases nothing). So dropouts never leave a released sum under-noised: with ``s >= m`` survivors
the sum's noise std is ``sigma C sqrt(s / m) >= sigma C``, and the accountant, run at ``sigma``, is
exact when ``s = m`` and conservative above it. The price is extra noise when everyone stays:
``sqrt(k / m)`` times the target with k participants (``reconstruction_threshold =
clients_per_round`` removes it and tolerates no dropout). Using ``m = k`` instead would make every
dropout a silent loss of privacy, which only a per-round accountant over the survivors could
report, and only after the fact.

How it differs from ``dp`` over a defense that shows uploads one by one. There each client adds the
full N(0, sigma^2 C^2) to its LoRA factors' delta (clipped in factor space) and the guarantee is the
Gaussian mechanism on each client's upload: the server holding one noisy update already gets the
epsilon. Here no single upload is private on its own (a share carries ``sigma / sqrt(m)``); the
guarantee is the Gaussian mechanism on the round's sum with sensitivity C (``w_i <= 1``) and noise
multiplier sigma, and it holds against a server that follows the protocol and sees only the sum.
Both are client-level (the unit is one client's whole update) and both compose ``rounds`` sampled
Gaussian mechanisms in opacus' accountant with the same sigma and sample rate, so one epsilon means
the same in both rows, while the sum here carries ``sqrt(k)`` times less noise per client than the
``k`` full-noise updates of ``dp`` would. Against the server, which knows whom it sampled, the sound
bound is ``amplification = false``; the default q = clients_per_round / n_clients holds for whoever
sees only the released models. The clients' sample counts are summed in secret but their sum is
released exactly, as ``dp`` over ``plain_lora`` releases each count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmark.contract import ClientUpdate, SecretSum

HOLD_SIGMAS = 7.0  # the range must hold a noise share to this many standard deviations


def share_std(clip: float, sigma: float, min_summands: int) -> float:
    """One client's noise std: ``min_summands`` shares sum to std ``sigma * clip``."""
    return sigma * clip / math.sqrt(min_summands)


def range_problem(clip: float, sigma: float, secret: SecretSum) -> str | None:
    """Why the entry bound of ``secret`` cannot hold a clipped change plus a noise share (None: it can)."""
    bound_key = secret.bound_key
    std = share_std(clip, sigma, secret.min_summands)
    need = clip + HOLD_SIGMAS * std
    if secret.entry_bound >= need:
        return None
    return (f"{bound_key}={secret.entry_bound:g} cannot hold dp's noise share: an entry reaches dp.clip + "
            f"{HOLD_SIGMAS:g} * sigma * clip / sqrt({secret.min_summands} summands) = {clip:g} + {HOLD_SIGMAS:g} * "
            f"{std:.4g} = {need:.4g}; use {bound_key} >= {need:.4g}, or a smaller dp.clip or sigma")


@dataclass(frozen=True)
class NoiseShare:
    """One client's part of distributed DP: clip the weighted dense change from the public start to
    ``weight * clip`` and add N(0, (sigma clip)^2 / min_summands) to every coordinate."""

    clip: float
    sigma: float

    def apply(self, update: ClientUpdate, vectors: list[np.ndarray], weight: float, min_summands: int,
              gen: torch.Generator) -> list[np.ndarray]:
        names = sorted(update.factors)
        start = _weighted_start(update, names, weight, vectors)
        change = [v - s for v, s in zip(vectors, start, strict=True)]
        norm = math.sqrt(sum(float(np.square(c).sum()) for c in change))
        bound = weight * self.clip
        factor = min(1.0, bound / norm) if norm > 0 else 1.0
        std = share_std(self.clip, self.sigma, min_summands)
        return [s + c * factor + std * torch.randn(c.shape, generator=gen, dtype=torch.float64).numpy()
                for s, c in zip(start, change)]


def _weighted_start(update: ClientUpdate, names: list[str], weight: float, like: list[np.ndarray]) -> list[Any]:
    """The public part of the summands: the weighted dense start (zero for a gradient probe)."""
    if update.kind == "grad" or update.prev is None:
        return [np.zeros_like(v) for v in like]
    return [weight * update.prev[n].delta().detach().double().cpu().numpy() for n in names]
