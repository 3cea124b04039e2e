"""Small, dependency-light statistics for privacy numbers: ROC AUC, TPR at a fixed FPR, and percentile
bootstrap confidence intervals (of a mean, or of any statistic over jointly resampled arrays).

Why a module of its own: every privacy figure in a report should carry a 95% interval and its n, and
the same few functions serve membership inference (AUC over candidates) and reconstruction attacks
(mean ROUGE over probe batches and seeds). Scores follow one convention throughout: higher means
"more likely a member"; NaN ranks lowest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np


class Interval(NamedTuple):
    """A point estimate on the full sample with its interval, its number of cases ``n`` and of
    independent units ``clusters`` (seeds; 0 where not recorded)."""

    value: float
    lo: float
    hi: float
    n: int
    clusters: int = 0


def _scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf, posinf=np.inf, neginf=-np.inf)


def _split(scores: Sequence[float] | np.ndarray, is_member: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, y = _scores(scores), np.asarray(is_member, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    return s[y], s[~y]


def auc(scores: Sequence[float] | np.ndarray, is_member: Sequence[bool] | np.ndarray) -> float:
    """ROC AUC = P(member score > non-member score) + 0.5 P(tie), by sorting (O(n log n)).
    With one class absent the AUC is undefined and reported as chance, 0.5."""
    pos, neg = _split(scores, is_member)
    if pos.size == 0 or neg.size == 0:
        return 0.5
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")  # non-members strictly lower than each member
    equal = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (pos.size * neg.size))


def tpr_at_fpr(scores: Sequence[float] | np.ndarray, is_member: Sequence[bool] | np.ndarray, max_fpr: float) -> float:
    """The largest true-positive rate of a rule "score >= t" whose false-positive rate is <= ``max_fpr``.

    At most m = floor(max_fpr * n_neg) non-members may pass, so t must lie above the (m+1)-th highest
    non-member score c; the best such rule flags exactly the members scoring above c."""
    pos, neg = _split(scores, is_member)
    if pos.size == 0 or neg.size == 0:
        return 0.0
    m = int(np.floor(max_fpr * neg.size + 1e-9))
    if m >= neg.size:
        return 1.0
    c = np.sort(neg)[::-1][m]
    return float((pos > c).mean())


def bootstrap_ci(
    values: Sequence[float] | np.ndarray | tuple[np.ndarray, ...],
    statistic: Callable[..., float] | None = None,
    *,
    strata: Sequence[Any] | np.ndarray | None = None,
    clusters: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Percentile bootstrap interval of ``statistic`` (default: the mean of ``values``).

    ``values`` is one array, or a tuple of equally long arrays resampled by the same row indices
    (e.g. ``(scores, is_member)`` with ``statistic=auc``). ``strata`` resamples within each stratum
    so that its size stays fixed (for AUC: members and non-members separately, as the candidate
    pool fixes both counts). ``clusters`` (e.g. each case's seed) resamples whole clusters with
    replacement instead of cases (one stage: cases within a drawn cluster are kept as they are, so
    their correlation is kept and their variance is not counted twice); the interval then records the
    number of clusters. With few clusters it is too narrow: see ``benchmark.reporting.clustered`` for
    the interval the verdicts use. Non-finite statistics of a resample are dropped."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    arrays = tuple(np.asarray(v) for v in values) if isinstance(values, tuple) else (np.asarray(values, dtype=float),)
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("all arrays in values must have the same length")
    stat = statistic or (lambda x: float(np.mean(x)))
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    if strata is not None and clusters is not None:
        raise ValueError("give strata or clusters, not both")
    point = float(stat(*arrays))
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(np.asarray(strata) == g) for g in np.unique(strata)]
    units = [] if clusters is None else [np.flatnonzero(np.asarray(clusters) == c) for c in np.unique(clusters)]
    gen = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        if units:
            idx = np.concatenate([units[i] for i in gen.integers(0, len(units), len(units))])
        else:
            idx = np.concatenate([g[gen.integers(0, g.size, g.size)] for g in groups])
        draws.append(float(stat(*(a[idx] for a in arrays))))
    d = np.asarray(draws)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return Interval(point, float("nan"), float("nan"), n, len(units))
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(d, [tail, 1.0 - tail])
    return Interval(point, float(lo), float(hi), n, len(units))


def membership_summary(scores: Sequence[float], is_member: Sequence[bool], prefix: str = "mia",
                       n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """AUC and TPR at 1% / 5% FPR with stratified bootstrap 95% intervals, as row columns:
    ``{prefix}_auc[_lo|_hi]``, ``{prefix}_tpr_at_1fpr[_lo|_hi]``, ``{prefix}_tpr_at_5fpr``."""
    s, y = _scores(scores), np.asarray(is_member, dtype=bool)
    out: dict[str, float] = {}
    stats: tuple[tuple[str, Callable[..., float]], ...] = (
        ("auc", auc), ("tpr_at_1fpr", lambda a, b: tpr_at_fpr(a, b, 0.01)))
    for name, fn in stats:
        est = bootstrap_ci((s, y), fn, strata=y, n_boot=n_boot, seed=seed)
        out.update({f"{prefix}_{name}": est.value, f"{prefix}_{name}_lo": est.lo, f"{prefix}_{name}_hi": est.hi})
    out[f"{prefix}_tpr_at_5fpr"] = tpr_at_fpr(s, y, 0.05)
    return out
