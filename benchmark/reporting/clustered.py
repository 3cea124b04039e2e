"""Means of bounded per-case values (ROUGE over probe batches) with seeds as clusters: an interval,
one-sided tests, TOST equivalence, a test of difference beyond a margin, Holm's correction, and paired
differences (a defense minus plain LoRA on the same seed and batch).

Why seeds are the unit. A seed draws the partition, the start and the probed client; the batches of
one seed share all three, so their values are correlated and are not independent replicates. What
varies between repetitions of the experiment is the seed, so inference is on the G seed means (the
"cluster means"), weighted by their number of cases.

Why not a mixed model. A random-intercept model assumes normal seed effects and normal residuals,
which bounded values with point masses at 0 and 1 are not, and with 5 seeds its between-seed variance
is often estimated at the boundary (0), which then treats pseudo-replicates as independent. In a
balanced design, where that variance is estimated above 0, its interval for the grand mean is the t
interval on the seed means anyway. So we work on the seed means directly, with no model for what
happens inside a seed.

Why not the cluster bootstrap. Resampling seeds (``stats.bootstrap_ci(..., clusters=...)``) has the
right unit, but with G seeds its variance is the plug-in one (factor (G-1)/G) read against normal
quantiles rather than t(G-1): at G = 5 the percentile interval covers a mean 52-85% of the time on
the data below (BCa was not tried: its corrections would be estimated from the same 5 points). Resampling
cases within seeds as well (two-stage) adds the within-seed variance a second time and still lacks the
t quantile. The bootstrap is right for many clusters; a report here has 5-10.

The interval: a design-effect Wilson interval (Korn and Graubard 1998; Dean and Pagano 2015 compare
these for clustered proportions). With values rescaled to [0, 1], the variance of a bounded mean is
at most mu (1 - mu), so write Var(mean) = k * mu (1 - mu) and estimate k from the cluster-robust
variance of the mean (sum over seeds of (n_g / N)^2 (seed mean - mean)^2, times G / (G - 1)). The
interval is every mu with |mean - mu| <= t(G-1) sqrt(k mu (1 - mu)): evaluating the variance at the
hypothesised mu, not at the estimate, is what keeps it from collapsing near 0 or 1 (on the data
below, a plain t interval on the seed means covers 77-93% at means 0.02-0.05 and 0.95-0.98), and
t(G-1) accounts for estimating k from G seeds.

Degenerate samples. When every seed mean is equal (every case 0.0, say), the estimated variance is 0
and any variance-based interval has width 0: three zeros would then refute anything. In that case we
use an exact bound that needs no variance: if the mean were >= c + d, a seed mean would differ from c
with probability >= d / (b - c) (values lie in [a, b]), so G equal seed means have probability
<= (1 - d / (b - c))^G. The test accounts for G: all-zero at 5 seeds bounds the mean by 0.52 (95%),
at 10 seeds by 0.31. It uses seeds, not cases, because cases within a seed may be perfectly
correlated. A consequence worth knowing: an all-zero sample can show "within 0.05 of 0" only with
(0.95)^G <= alpha, i.e. G >= 59 seeds, as no finite variance estimate is available to do better.

Coverage at nominal 95%, measured on 2000 replicates per setting with 5 or 10 seeds of 6 cases,
ROUGE-like values (Beta draws around a seed-level mean, rounded to 1/20) and intra-seed correlation
0 to 0.5 (``tests/test_verdicts.py`` asserts 90-98% on a grid of these):
- means 0.05 to 0.95, correlation <= 0.25: 91-96%;
- correlation 0.5: 92-96% for means 0.1 to 0.9; 88-89% at 0.05 and 0.95; 85-93% at 0.02 and 0.98
  (a rare good seed is then missing from most samples of 5-10 seeds: no interval built from the seed
  means can know that it exists);
- 0/1 values (attack success or failure per case): 93-99%.
Paired differences behave alike: 88-97% on 24 settings, lowest where the difference is near -1 at
correlation 0.5, as for a level near a bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy.special import stdtr, stdtrit

from benchmark.reporting.stats import Interval

_TIE = 1e-12  # seed means closer than this (relative to the range) are equal


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not samples
class ClusterSample:
    """Per-case values in [lo, hi] grouped by cluster (seed): what every test here reads.

    ``means`` and ``sizes`` are per cluster; ``value`` is the mean over cases (clusters weighted by
    their size), ``var`` its cluster-robust variance (0 with fewer than two clusters)."""

    means: np.ndarray
    sizes: np.ndarray
    bounds: tuple[float, float] = (0.0, 1.0)

    @property
    def n(self) -> int:
        return int(self.sizes.sum())

    @property
    def clusters(self) -> int:
        return int(self.means.size)

    @cached_property
    def value(self) -> float:
        return float(np.dot(self.sizes, self.means) / self.n) if self.n else math.nan

    @cached_property
    def var(self) -> float:
        g = self.clusters
        if g < 2:
            return 0.0
        w = self.sizes / self.n
        return float(g / (g - 1) * np.sum((w * (self.means - self.value)) ** 2))

    @property
    def degenerate(self) -> bool:
        """Every cluster mean is the same: no variance to estimate."""
        lo, hi = self.bounds
        return bool(np.ptp(self.means) <= _TIE * (hi - lo))

    def _unit(self, x: float) -> float:
        lo, hi = self.bounds
        return (x - lo) / (hi - lo)

    def _k(self) -> float:
        """Var(mean) / (mu (1 - mu)) on the unit scale (the design-effect ratio over G)."""
        p = self._unit(self.value)
        return self.var / (self.bounds[1] - self.bounds[0]) ** 2 / (p * (1.0 - p))

    def p_greater(self, x: float) -> float:
        """p-value of H0: mean <= x against mean > x."""
        return self._one_sided(x, upper=True)

    def p_less(self, x: float) -> float:
        """p-value of H0: mean >= x against mean < x."""
        return self._one_sided(x, upper=False)

    def _one_sided(self, x: float, upper: bool) -> float:
        g = self.clusters
        if g < 2:
            return 1.0  # one seed carries no between-seed information
        p, x = self._unit(self.value), self._unit(x)
        if not upper:  # mirror: "mean < x" is "1 - mean > 1 - x"
            p, x = 1.0 - p, 1.0 - x
        if x < 0.0:
            return 0.0  # H0 lies outside the range the values can take
        if x >= 1.0:
            return 1.0  # H0 holds whatever the data
        if self.degenerate:  # every seed mean is p: exact, needs no variance
            return 1.0 if p <= x else float((x / p) ** g)
        if x == 0.0:
            return 0.0  # a mean of exactly 0 would make every value 0, and they differ
        z = (p - x) / math.sqrt(self._k() * x * (1.0 - x))
        return float(stdtr(g - 1, -z))

    def interval(self, level: float = 0.95) -> Interval:
        """Two-sided interval: the design-effect Wilson interval, or the exact bound where every seed
        mean is equal; the whole range with fewer than two seeds."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        a, b = self.bounds
        g = self.clusters
        if g == 0:
            return Interval(math.nan, math.nan, math.nan, 0, 0)
        if g < 2:
            return Interval(self.value, a, b, self.n, g)
        p, tail = self._unit(self.value), (1.0 - level) / 2.0
        if self.degenerate:
            d = 1.0 - tail ** (1.0 / g)
            lo, hi = p * (1.0 - d), p + (1.0 - p) * d
        else:
            c = stdtrit(g - 1, 1.0 - tail) ** 2 * self._k()
            half = math.sqrt(c * (c + 4.0 * p * (1.0 - p)))
            lo, hi = (2.0 * p + c - half) / (2.0 * (1.0 + c)), (2.0 * p + c + half) / (2.0 * (1.0 + c))
        return Interval(self.value, a + (b - a) * max(lo, 0.0), a + (b - a) * min(hi, 1.0), self.n, g)


def clustered(values: Sequence[float] | np.ndarray, clusters: Sequence[object] | np.ndarray,
              bounds: tuple[float, float] = (0.0, 1.0)) -> ClusterSample:
    """Group per-case ``values`` by ``clusters`` (the seed of each case). NaN values (an attack that
    abstained measured nothing) are dropped; a value outside ``bounds`` is an error."""
    v = np.asarray(values, dtype=float)
    c = np.asarray(clusters, dtype=object)
    if v.shape != c.shape:
        raise ValueError(f"values ({v.size}) and clusters ({c.size}) differ in length")
    keep = ~np.isnan(v)
    v, c = v[keep], c[keep]
    a, b = bounds
    if not a < b:
        raise ValueError(f"bounds must be increasing, got {bounds}")
    if v.size and (v.min() < a - 1e-9 or v.max() > b + 1e-9):
        raise ValueError(f"values must lie in {bounds}; got [{v.min():g}, {v.max():g}]")
    index, labels = pd.factorize(c)
    if (index < 0).any():
        raise ValueError("every scored case needs a cluster (seed)")
    sizes = np.bincount(index, minlength=labels.size).astype(float)
    means = np.bincount(index, weights=np.clip(v, a, b), minlength=labels.size) / np.maximum(sizes, 1)
    return ClusterSample(means, sizes, (float(a), float(b)))


def cluster_interval(values: Sequence[float] | np.ndarray, clusters: Sequence[object] | np.ndarray,
                     level: float = 0.95, bounds: tuple[float, float] = (0.0, 1.0)) -> Interval:
    """The mean of ``values`` with its interval, n (cases) and the number of clusters (seeds)."""
    return clustered(values, clusters, bounds).interval(level)


@dataclass(frozen=True)
class Paired:
    """Differences treated minus baseline on the cases both sides scored, as a cluster sample."""

    sample: ClusterSample
    unmatched: int  # cases scored on one side only (left out)


def paired(treated: pd.DataFrame, baseline: pd.DataFrame, *, value: str = "rouge1",
           on: Sequence[str] = ("seed", "probe_batch"), cluster: str = "seed",
           bounds: tuple[float, float] = (0.0, 1.0)) -> Paired:
    """Pair the rows of one cell (same scenario, attack, mode, batch size) of two defenses on the keys
    ``on`` (the same seed and private batch), and return their differences clustered by ``cluster``.
    Rows with no value (abstained) are unmatched. A key that occurs twice on one side is an error:
    the pairing would be ambiguous."""
    keys = list(on)
    if cluster not in keys:
        raise ValueError(f"the cluster column {cluster!r} must be one of the pairing keys {keys}")
    sides = []
    for name, rows in (("treated", treated), ("baseline", baseline)):
        part = rows[[*keys, value]].assign(**{value: pd.to_numeric(rows[value], errors="coerce")}).dropna()
        if part.duplicated(keys).any():
            raise ValueError(f"{name} rows repeat a key in {keys}: cannot pair")
        sides.append(part)
    both = sides[0].merge(sides[1], on=keys, suffixes=("_t", "_b"))
    a, b = bounds
    diffs = both[f"{value}_t"].to_numpy(float) - both[f"{value}_b"].to_numpy(float)
    sample = clustered(diffs, both[cluster].to_numpy(), (a - b, b - a))
    return Paired(sample, len(sides[0]) + len(sides[1]) - 2 * len(both))


@dataclass(frozen=True)
class Test:
    """A p-value and its decision at ``alpha`` (before any multiplicity correction)."""

    p: float
    alpha: float

    @property
    def rejected(self) -> bool:
        return self.p <= self.alpha


def tost(sample: ClusterSample, reference: float, margin: float, alpha: float = 0.05) -> Test:
    """Two one-sided tests of equivalence: H0 |mean - reference| >= margin. Rejecting (p <= alpha)
    says the mean lies within ``margin`` of ``reference``; it is the same as the 1 - 2 alpha interval
    lying inside (reference - margin, reference + margin). ``reference`` is a published value (one
    sample) or a published contrast with a paired sample."""
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    return Test(max(sample.p_greater(reference - margin), sample.p_less(reference + margin)), alpha)


def difference(sample: ClusterSample, reference: float, margin: float, alpha: float = 0.05) -> Test:
    """Test of a difference beyond the margin: H0 |mean - reference| <= margin. Rejecting says the
    mean lies more than ``margin`` from ``reference``; it is the same as the 1 - alpha interval lying
    wholly outside [reference - margin, reference + margin]. Two one-sided alternatives, hence the
    factor 2."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    p = 2.0 * min(sample.p_less(reference - margin), sample.p_greater(reference + margin))
    return Test(min(1.0, p), alpha)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (reject where adjusted <= alpha), in the input order. NaN
    entries (tests not made) stay NaN and do not count in the family."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out
