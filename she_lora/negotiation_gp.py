"""Negotiation with the shares chosen per tier to maximise the paper's Eq. 14 (the public code's way).

``she_lora.negotiation`` splits each budget increment over the tier, Common and Sensitivity lists by
fixed shares (a, b, c). The public SHE-LoRA code instead picks (a, b, c) for every budget tier with
scikit-optimize's ``gp_minimize``, maximising (Eq. 14)

    score(G) = min_i Coverage_i - max_i Risk_i,
    Coverage_i = min over modules of |G[:k_i] & T_i| / |T_i|,
    Risk_i     = max over modules of sum_{j in T_i - G[:k_i]} w_ij / sum_{j in T_i} w_ij,

where T_i is client i's top-k_i list for a module (its negotiation message) and G[:k_i] the prefix of
the global list it encrypts. w_ij is client i's score for column j when scores are sent; without
scores it is the reverse rank k_i - position, the only order a bare list carries. The objective uses
exactly what the fixed negotiation uses (the messages' codes, their order, scores when sent, and the
earlier global list), so the server learns nothing new; the federation seed only seeds the optimiser.

Where this departs from the public code, and why:

- Res_i is the prefix client i encrypts, not everything chosen so far: the public code counted a
  small-budget client as covered by columns only larger budgets encrypt.
- Tiers are tuned one after another; each candidate is scored on the complete list, later tiers at
  the fixed shares, and the fixed shares are the first point tried. Ties keep the earliest point, so
  the result never scores below the fixed shares (the public code scores the partial selection).
- (a, b, c) is searched on the simplex itself: a = u, b = (1 - u) v, c = (1 - u)(1 - v) for (u, v)
  in the unit square (the public code searched the square and penalised a + b > 1).
- Fewer calls (20, not 50), the GP's hyperparameters fixed rather than refitted every step, and a
  sampled acquisition, so a tier costs a fraction of a second; candidates that give the same column
  quotas are scored once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from she_lora.negotiation import (
    DEFAULT_SHARES,
    Rankings,
    Shares,
    TopK,
    check_shares,
    extend_to,
)

GP_CALLS = 20
N_POINTS = 500  # random candidates the acquisition function is evaluated on per step


@dataclass(frozen=True)
class Negotiated:
    """A negotiation's outcome: the global lists and how they were chosen (public, JSON-friendly)."""

    lists: dict[str, list[int]]
    method: str
    tier_k: tuple[int, ...]  # per budget tier of the senders, ascending: its largest list length
    shares: tuple[Shares | None, ...]  # per budget tier; None where the tier added no column
    objective: float  # Eq. 14 of ``lists``
    objective_fixed: float  # Eq. 14 of the fixed shares' lists on the same messages

    def record(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tier_k": list(self.tier_k),
            "shares": [None if s is None else [round(x, 6) for x in s] for s in self.shares],
            "eq14": self.objective,
            "eq14_fixed": self.objective_fixed,
        }


class Problem:
    """One negotiation's messages, pre-ranked: builds global lists for per-tier shares and scores them.

    A budget tier is a distinct vector of list lengths over the modules (clients of one budget send
    lists of the same lengths), ascending. In each module the walk over its distinct lengths is the
    fixed negotiation's; the step to length k takes the shares of the lowest tier whose length is k.
    """

    def __init__(self, messages: Sequence[Mapping[str, TopK]], names: Sequence[str], prefix: Mapping[str, Sequence[int]]) -> None:
        self.names = list(names)
        for n in self.names:
            if len(set(prefix.get(n, ()))) != len(prefix.get(n, ())):
                raise ValueError("negotiation: the existing global list repeats a column")
        self.prefix = {n: list(prefix.get(n, ())) for n in self.names}
        self.rankings = {n: Rankings.of([msg[n] for msg in messages]) for n in self.names}
        self.tiers = sorted({tuple(len(msg[n].codes) for n in self.names) for msg in messages}, key=lambda v: (sum(v), v))
        # per module: (k, tier, increment) of the steps that add columns
        self.steps: dict[str, list[tuple[int, int, int]]] = {}
        for m, n in enumerate(self.names):
            length, steps = len(self.prefix[n]), []
            for k in sorted(self.rankings[n].tiers):
                if k > length:
                    tier = next(t for t, v in enumerate(self.tiers) if v[m] == k)
                    steps.append((k, tier, k - length))
                    length = k
            self.steps[n] = steps
        self._prepare_scoring(messages)

    def _prepare_scoring(self, messages: Sequence[Mapping[str, TopK]]) -> None:
        """Flat arrays for Eq. 14: every (client, module, entry) with its column's id among all
        listed columns, its client's k for the module and its weight (score, else reverse rank)."""
        self._codes = [np.unique([c for msg in messages for c in msg[n].codes]).astype(np.int64) for n in self.names]
        self._offsets = np.cumsum([0] + [len(u) for u in self._codes])
        n_mod = len(self.names)
        ids, thresh, weights, seg = [], [], [], []
        self._k = np.zeros((len(messages), n_mod))
        for c, msg in enumerate(messages):
            for m, n in enumerate(self.names):
                t = msg[n]
                k = len(t.codes)
                self._k[c, m] = k
                ids.append(self._offsets[m] + np.searchsorted(self._codes[m], np.asarray(t.codes, dtype=np.int64)))
                thresh.append(np.full(k, k))
                weights.append(np.asarray(t.scores, dtype=np.float64) if t.scores is not None else np.arange(k, 0, -1, dtype=np.float64))
                seg.append(np.full(k, c * n_mod + m))
        none = [np.zeros(0)]
        self._ids = np.concatenate(none + ids).astype(np.int64)
        self._thresh = np.concatenate(none + thresh)
        self._weights = np.concatenate(none + weights)
        self._seg = np.concatenate(none + seg).astype(np.int64)
        self._wsum = np.bincount(self._seg, weights=self._weights, minlength=self._k.size).reshape(self._k.shape)

    @property
    def tier_k(self) -> tuple[int, ...]:
        return tuple(max(v, default=0) for v in self.tiers)

    def increments(self, tier: int) -> list[int]:
        """The distinct column increments tier ``tier`` adds (the shares act only through these)."""
        return sorted({lam for steps in self.steps.values() for _, t, lam in steps if t == tier})

    def build(self, shares: Sequence[Shares]) -> dict[str, list[int]]:
        """Global lists with ``shares[t]`` for budget tier t."""
        for s in shares:
            check_shares(s)
        out = {}
        for n in self.names:
            selected = list(self.prefix[n])
            chosen = set(selected)
            for k, tier, _ in self.steps[n]:
                extend_to(selected, chosen, k, self.rankings[n], shares[tier])
            out[n] = selected
        return out

    def score(self, lists: Mapping[str, Sequence[int]]) -> float:
        """Eq. 14 of ``lists``: min over clients of coverage minus max over clients of risk, each
        client's taken over the modules it has columns in (0 when no client has any)."""
        pos = np.full(int(self._offsets[-1]), np.iinfo(np.int64).max, dtype=np.int64)
        for m, n in enumerate(self.names):
            g = np.asarray(lists[n], dtype=np.int64)
            at = np.minimum(np.searchsorted(self._codes[m], g), max(len(self._codes[m]) - 1, 0))
            listed = self._codes[m][at] == g if len(self._codes[m]) else np.zeros(len(g), dtype=bool)
            pos[self._offsets[m] + at[listed]] = np.flatnonzero(listed)
        hit = pos[self._ids] < self._thresh
        size = self._k.size
        covered = np.bincount(self._seg, weights=hit, minlength=size).reshape(self._k.shape)
        safe = np.bincount(self._seg, weights=self._weights * hit, minlength=size).reshape(self._k.shape)
        has = self._k > 0
        coverage = np.where(has, covered / np.maximum(self._k, 1), np.inf).min(axis=1, initial=np.inf)
        weighted = has & (self._wsum > 0)
        risk = np.where(weighted, (self._wsum - safe) / np.where(weighted, self._wsum, 1.0), 0.0).max(axis=1, initial=0.0)
        clients = has.any(axis=1)
        return float(coverage[clients].min() - risk[clients].max()) if clients.any() else 0.0


def from_square(u: float, v: float) -> Shares:
    """(u, v) in the unit square -> shares on the simplex (stick-breaking)."""
    a = min(max(float(u), 0.0), 1.0)
    b = (1.0 - a) * min(max(float(v), 0.0), 1.0)
    return a, b, max(0.0, 1.0 - a - b)


def to_square(shares: Shares) -> list[float]:
    a, b, _ = shares
    return [float(a), float(b) / (1.0 - a) if a < 1.0 else 0.0]


def negotiate_fixed(messages: Sequence[Mapping[str, TopK]], names: Sequence[str], prefix: Mapping[str, Sequence[int]],
                    shares: Shares = DEFAULT_SHARES, random_state: Sequence[int] = (), n_calls: int = GP_CALLS) -> Negotiated:
    """Today's negotiation (the same shares for every tier), with its Eq. 14 score recorded."""
    problem = Problem(messages, names, prefix)
    lists = problem.build([shares] * len(problem.tiers))  # merge_global_list per module, one ranking pass
    score = problem.score(lists)
    active = {t for steps in problem.steps.values() for _, t, _ in steps}
    return Negotiated(lists, "fixed", problem.tier_k, tuple(shares if t in active else None for t in range(len(problem.tiers))),
                      score, score)


def negotiate_gp(messages: Sequence[Mapping[str, TopK]], names: Sequence[str], prefix: Mapping[str, Sequence[int]],
                 shares: Shares = DEFAULT_SHARES, random_state: Sequence[int] = (), n_calls: int = GP_CALLS) -> Negotiated:
    """Shares per budget tier by ``gp_minimize`` on -Eq. 14, tier by tier from the lowest budget;
    ``shares`` is the starting point and stands in for the tiers not yet tuned. Deterministic for a
    given ``random_state`` (e.g. the federation seed and the negotiation version)."""
    from skopt import gp_minimize  # imported here: scikit-learn takes seconds to load
    from threadpoolctl import threadpool_limits

    check_shares(shares)
    problem = Problem(messages, names, prefix)
    chosen: list[Shares] = [shares] * len(problem.tiers)
    fixed = problem.score(problem.build(chosen))
    best = fixed
    tuned: list[Shares | None] = [None] * len(problem.tiers)
    n_initial = max(1, min(7, n_calls // 3))
    # one BLAS thread: the GP's matrices are tiny, and threads only spin on a shared machine
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plateaus: the optimiser proposes points it has tried
        for tier in range(len(problem.tiers)):
            lams = problem.increments(tier)
            if not lams:
                continue
            seed = int(np.random.SeedSequence([*random_state, tier]).generate_state(1)[0])
            result = gp_minimize(_memoized(problem, chosen, tier, lams), [(0.0, 1.0), (0.0, 1.0)], base_estimator=_surrogate(seed),
                                 n_calls=max(n_calls, n_initial + 1), n_initial_points=n_initial, x0=[to_square(shares)],
                                 acq_optimizer="sampling", n_points=N_POINTS, random_state=seed)
            chosen[tier] = tuned[tier] = from_square(*result.x)
            best = -float(result.fun)
    lists = problem.build(chosen)
    return Negotiated(lists, "gp", problem.tier_k, tuple(tuned), best, fixed)


def _surrogate(seed: int) -> Any:
    """skopt's GP surrogate (Matern 5/2 on normalised scores), its hyperparameters held fixed:
    fitting them to a handful of points on a piecewise-constant objective cost ~2/3 of the time and
    changed no choice on the cases we tried. Length 0.3: shares that far apart usually move a quota."""
    from skopt.learning import GaussianProcessRegressor
    from skopt.learning.gaussian_process.kernels import ConstantKernel, Matern

    kernel = ConstantKernel(1.0, "fixed") * Matern([0.3, 0.3], "fixed", nu=2.5)
    return GaussianProcessRegressor(kernel=kernel, normalize_y=True, noise=1e-2, optimizer=None, random_state=seed)


def _memoized(problem: Problem, chosen: list[Shares], tier: int, lams: list[int]) -> Callable[[list[float]], float]:
    """-Eq. 14 of the lists with ``tier``'s shares set to the candidate; candidates that split every
    increment into the same column quotas give the same lists, so each quota pattern is built once."""
    cache: dict[tuple[tuple[int, int], ...], float] = {}

    def objective(x: list[float]) -> float:
        cand = from_square(*x)
        key = tuple((math.floor(cand[0] * lam), math.floor(cand[1] * lam)) for lam in lams)
        if key not in cache:
            trial = [*chosen[:tier], cand, *chosen[tier + 1:]]
            cache[key] = -problem.score(problem.build(trial))
        return cache[key]

    return objective


NEGOTIATIONS: dict[str, Callable[..., Negotiated]] = {"fixed": negotiate_fixed, "gp": negotiate_gp}
