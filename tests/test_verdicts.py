"""Seed-clustered intervals, TOST, tests of difference, Holm and the verdict rule
(benchmark/reporting/clustered.py, verdicts.py): coverage on synthetic clustered data, and hand-made
cases whose answers are known."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from benchmark.reporting.clustered import clustered, difference, holm, paired, tost
from benchmark.reporting.stats import bootstrap_ci
from benchmark.reporting.verdicts import Claim, rule_text, verdicts

STEP = 20  # ROUGE-1 of a ~20-token text moves in steps of about 1/20
K = 4.0  # concentration of a case's value around its seed's level
CASES = 6  # probe batches per seed


def rouge_like(gen: np.random.Generator, seeds: int, mean: float, icc: float) -> np.ndarray:
    """Values in [0, 1] on a 1/20 grid, seeds x CASES: each seed draws its level from a Beta of the
    given mean, each case a Beta around its seed's level; ``icc`` is the intra-seed correlation of the
    unrounded values."""
    if icc == 0:
        level = np.full(seeds, mean)
    else:
        phi = (K + 1) * (1 / icc - 1)
        level = gen.beta(mean * phi, (1 - mean) * phi, seeds)
    level = np.clip(level, 1e-9, 1 - 1e-9)[:, None]
    return np.round(gen.beta(level * K, (1 - level) * K, (seeds, CASES)) * STEP) / STEP


def rouge_like_mean(mean: float, icc: float) -> float:
    """The exact mean of ``rouge_like`` (rounding moves it off ``mean``): the rounded Beta's mean,
    averaged over seed levels at 4000 quantiles of their Beta."""
    if icc == 0:
        level = np.array([mean])
    else:
        phi = (K + 1) * (1 / icc - 1)
        level = sps.beta.ppf((np.arange(4000) + 0.5) / 4000, mean * phi, (1 - mean) * phi)
    level = np.clip(level, 1e-9, 1 - 1e-9)[:, None]
    steps = np.arange(STEP + 1)
    edges = np.clip(np.r_[steps - 0.5, STEP + 0.5] / STEP, 0, 1)
    mass = np.diff(sps.beta.cdf(edges[None, :], level * K, (1 - level) * K), axis=1)
    return float((mass @ steps / STEP).mean())


def coverage(seeds: int, mean: float, icc: float, reps: int, rng_seed: int) -> float:
    gen = np.random.default_rng(rng_seed)
    truth = rouge_like_mean(mean, icc)
    labels = np.repeat(np.arange(seeds), CASES)
    hits = 0
    for _ in range(reps):
        iv = clustered(rouge_like(gen, seeds, mean, icc).ravel(), labels).interval(0.95)
        hits += iv.lo <= truth <= iv.hi
    return hits / reps


# Measured at 2000 replicates (see clustered.py): 0.89-0.96 over 5/10 seeds, icc 0-0.5, means 0.05-0.95;
# the rows here are those inside 90-98% (at icc 0.5 a mean of 0.05 or 0.95 gives 0.88-0.89).
COVERAGE_CASES = [(g, icc, m) for g in (5, 10) for icc in (0.0, 0.25) for m in (0.05, 0.5, 0.95)] + [
    (g, 0.5, m) for g in (5, 10) for m in (0.2, 0.5, 0.8)]


@pytest.mark.parametrize("seeds,icc,mean", COVERAGE_CASES)
def test_interval_covers_95_percent_on_clustered_rouge_like_data(seeds, icc, mean):
    cov = coverage(seeds, mean, icc, reps=1000, rng_seed=int(1000 * mean + 100 * icc + seeds))
    assert 0.90 <= cov <= 0.98, f"coverage {cov:.3f} at {seeds} seeds, icc {icc}, mean {mean}"


def test_interval_covers_on_zero_one_values():
    """Attack success or failure per case (0/1): the exact edge of bounded values."""
    gen = np.random.default_rng(11)
    labels = np.repeat(np.arange(10), CASES)
    hits = 0
    for _ in range(1000):
        level = gen.beta(0.2 * 3, 0.8 * 3, 10)[:, None]  # icc 1 / (1 + 3) = 0.25 for 0/1 values
        x = (gen.random((10, CASES)) < level).astype(float).ravel()
        iv = clustered(x, labels).interval()
        hits += iv.lo <= 0.2 <= iv.hi
    assert 0.90 <= hits / 1000 <= 0.98


@pytest.mark.parametrize("seeds,icc,plain,defense", [(5, 0.25, 0.8, 0.3), (10, 0.25, 0.95, None)])
def test_paired_difference_interval_covers(seeds, icc, plain, defense):
    """Defense minus plain LoRA on the same seeds and batches; ``None``: a defense scoring 0 everywhere."""
    gen = np.random.default_rng(seeds)
    truth = (rouge_like_mean(defense, icc) if defense is not None else 0.0) - rouge_like_mean(plain, icc)
    labels = np.repeat(np.arange(seeds), CASES)
    hits = 0
    for _ in range(1000):
        p = rouge_like(gen, seeds, plain, icc).ravel()
        d = rouge_like(gen, seeds, defense, icc).ravel() if defense is not None else np.zeros_like(p)
        iv = clustered(d - p, labels, (-1.0, 1.0)).interval()  # what ``paired`` builds (tested below)
        hits += iv.lo <= truth <= iv.hi
    assert 0.90 <= hits / 1000 <= 0.98


def test_percentile_cluster_bootstrap_undercovers_with_five_seeds():
    """Why the verdicts do not use it (clustered.py): on data where the Wilson interval covers ~95%."""
    gen = np.random.default_rng(5)
    truth = rouge_like_mean(0.5, 0.25)
    labels = np.repeat(np.arange(5), CASES)
    boot = wilson = 0
    for i in range(200):
        x = rouge_like(gen, 5, 0.5, 0.25).ravel()
        b = bootstrap_ci(x, clusters=labels, n_boot=200, seed=i)
        w = clustered(x, labels).interval()
        boot += b.lo <= truth <= b.hi
        wilson += w.lo <= truth <= w.hi
        assert b.clusters == 5 and b.n == 30
    assert boot / 200 < 0.90 < wilson / 200


def test_cluster_bootstrap_draws_whole_clusters():
    labels = np.repeat(np.arange(4), 3)
    values = labels * 10.0
    seen = []
    bootstrap_ci(values, lambda v: seen.append(np.bincount((v // 10).astype(int), minlength=4)) or 0.0,
                 clusters=labels, n_boot=50)
    assert all(c.sum() == 12 and set(c.tolist()) <= {0, 3, 6, 9, 12} for c in seen)  # 3 cases per drawn cluster
    with pytest.raises(ValueError):
        bootstrap_ci(values, strata=labels, clusters=labels)


# ---- hand-made samples ----------------------------------------------------------------------------


def sample(seed_means, cases=CASES, bounds=(0.0, 1.0)):
    """Every case of a seed equal to its seed mean (within-seed variance plays no part here)."""
    seed_means = np.asarray(seed_means, dtype=float)
    return clustered(np.repeat(seed_means, cases), np.repeat(np.arange(seed_means.size), cases), bounds)


def test_clustered_weights_cases_and_drops_abstentions():
    s = clustered([0.0, 1.0, 1.0, math.nan, 0.5], ["a", "b", "b", "b", "c"])
    assert (s.n, s.clusters) == (4, 3)
    assert s.value == pytest.approx(2.5 / 4)
    iv = s.interval()
    assert iv.n == 4 and iv.clusters == 3 and 0.0 <= iv.lo < iv.value < iv.hi <= 1.0
    with pytest.raises(ValueError):
        clustered([1.5], [0])


def test_interval_inverts_the_one_sided_tests():
    s = clustered([0.1, 0.3, 0.2, 0.6, 0.25, 0.15, 0.4], [0, 0, 1, 1, 2, 3, 3])
    iv = s.interval(0.95)
    assert s.p_greater(iv.lo) == pytest.approx(0.025, abs=1e-9)
    assert s.p_less(iv.hi) == pytest.approx(0.025, abs=1e-9)
    assert iv.lo < s.value < iv.hi


def test_wilson_interval_by_hand():
    s = sample([0.4, 0.45, 0.5, 0.55, 0.6])
    # var of the mean: s^2 / G = 0.00625 / 5; on the unit scale k = var / (0.5 * 0.5) = 0.005
    c = sps.t.ppf(0.975, 4) ** 2 * 0.005
    half = math.sqrt(c * (c + 1.0))
    assert s.interval() == pytest.approx((0.5, (1 + c - half) / (2 + 2 * c), (1 + c + half) / (2 + 2 * c), 30, 5))
    assert s.p_greater(0.3) == pytest.approx(sps.t.sf(0.2 / math.sqrt(0.005 * 0.3 * 0.7), 4))


def test_all_zero_interval_is_exact_and_depends_on_the_number_of_seeds():
    five, ten = sample([0.0] * 5), sample([0.0] * 10)
    assert five.interval() == pytest.approx((0.0, 0.0, 1 - 0.025 ** (1 / 5), 30, 5))  # 0.522
    assert ten.interval().hi == pytest.approx(1 - 0.025 ** (1 / 10))  # 0.308
    assert sample([1.0] * 5).interval().lo == pytest.approx(0.025 ** (1 / 5))
    assert sample([0.0], cases=30).interval() == (0.0, 0.0, 1.0, 30, 1)  # one seed: no information
    assert math.isnan(clustered([], []).interval().value)


def test_tost_accepts_a_tight_sample_at_the_reference():
    s = sample(np.linspace(0.49, 0.51, 10))
    assert tost(s, 0.5, 0.05).rejected
    assert tost(s, 0.5, 0.05).p < 1e-6
    assert not tost(s, 0.56, 0.05).rejected  # the mean, 0.50, lies outside 0.51..0.61
    assert tost(s, 0.56, 0.05).p > 0.5


def test_tost_known_values():
    s = sample([0.4, 0.45, 0.5, 0.55, 0.6])  # k = 0.005 (see the Wilson test)
    p_margin_02 = sps.t.sf(0.2 / math.sqrt(0.005 * 0.3 * 0.7), 4)  # ~0.002, both sides alike
    assert tost(s, 0.5, 0.2).p == pytest.approx(p_margin_02)
    assert tost(s, 0.5, 0.2).rejected
    assert tost(s, 0.5, 0.05).p == pytest.approx(sps.t.sf(0.05 / math.sqrt(0.005 * 0.45 * 0.55), 4))  # ~0.11
    assert not tost(s, 0.5, 0.05).rejected
    with pytest.raises(ValueError):
        tost(s, 0.5, 0.0)


def test_tost_cannot_reproduce_zero_from_all_zero_seeds():
    """Every case 0 says nothing about rare nonzero cases beyond the count of seeds."""
    p = tost(sample([0.0] * 5), 0.0, 0.05).p
    assert p == pytest.approx(0.95 ** 5)  # 0.77
    assert not tost(sample([0.0] * 58), 0.0, 0.05).rejected
    assert tost(sample([0.0] * 59), 0.0, 0.05).rejected  # 0.95^59 = 0.048


def test_tost_and_difference_hold_their_size_at_the_margin():
    """True mean exactly on the boundary of each null: each rejects at most ~5% of the time."""
    gen = np.random.default_rng(21)
    truth = rouge_like_mean(0.6, 0.25)
    labels = np.repeat(np.arange(10), CASES)
    eq = diff = 0
    for _ in range(1000):
        s = clustered(rouge_like(gen, 10, 0.6, 0.25).ravel(), labels)
        eq += tost(s, truth - 0.1, 0.1).rejected  # |truth - ref| = margin: H0 of TOST holds
        diff += difference(s, truth - 0.1, 0.1).rejected  # |truth - ref| = margin: H0 of difference holds
    assert eq / 1000 <= 0.07 and diff / 1000 <= 0.07


def test_difference_known_values():
    s = sample([0.4, 0.45, 0.5, 0.55, 0.6])
    assert difference(s, 0.95, 0.05).p == pytest.approx(2 * sps.t.sf(0.4 / math.sqrt(0.005 * 0.9 * 0.1), 4))
    assert difference(s, 0.95, 0.05).rejected
    assert not difference(s, 0.6, 0.05).rejected
    zeros = sample([0.0] * 5)
    assert difference(zeros, 0.69, 0.05).p == pytest.approx(2 * 0.36 ** 5)  # 0.012
    assert difference(sample([0.0] * 3), 0.69, 0.05).p == pytest.approx(2 * 0.36 ** 3)  # 0.093: too few seeds


def test_holm_on_a_known_family():
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])  # 4 x 0.005, 3 x 0.01, 2 x 0.03, max(0.04, 0.06)
    assert list(adjusted <= 0.05) == [True, False, False, True]
    nan_kept = holm([math.nan, 0.01, 0.5])
    assert math.isnan(nan_kept[0]) and nan_kept[1:] == pytest.approx([0.02, 0.5])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_paired_matches_seed_and_batch_and_counts_the_rest():
    treated = pd.DataFrame({"seed": [0, 0, 1, 1, 2], "probe_batch": [0, 1, 0, 1, 0],
                            "rouge1": [0.0, 0.5, math.nan, 0.2, 0.3]})
    baseline = pd.DataFrame({"seed": [0, 0, 1, 1, 3], "probe_batch": [1, 0, 0, 1, 0],
                             "rouge1": [0.9, 1.0, 1.0, 0.2, 0.7]})
    out = paired(treated, baseline)
    assert out.unmatched == 3  # (1, 0) abstained on one side, (2, 0) and (3, 0) on one side only
    assert out.sample.clusters == 2 and out.sample.n == 3
    assert out.sample.value == pytest.approx(((0.0 - 1.0) + (0.5 - 0.9) + 0.0) / 3)
    assert out.sample.bounds == (-1.0, 1.0)
    with pytest.raises(ValueError):
        paired(pd.concat([treated, treated]), baseline)


# ---- the verdict rule -----------------------------------------------------------------------------

MARGIN = 0.05


def labels(claims):
    return [v.label for v in verdicts(claims, MARGIN)]


def test_verdicts_on_hand_made_claims():
    tight_95 = sample(np.linspace(0.94, 0.96, 10))
    tight_40 = sample(np.linspace(0.39, 0.41, 10))
    wide = sample([0.1, 0.9, 0.5, 0.3, 0.7])
    claims = [Claim(tight_95, 0.9518), Claim(tight_40, 0.9518),
              Claim(tight_40, 0.9518, mismatch="noise 0.5 vs the paper's 1.0"),
              Claim(wide, 0.6), Claim(sample([0.6], cases=30), 0.6)]
    assert labels(claims) == ["reproduced", "refuted", "not comparable (noise 0.5 vs the paper's 1.0)",
                              "inconclusive", "inconclusive"]
    out = verdicts(claims, MARGIN)
    assert math.isnan(out[2].p_equivalence) and math.isnan(out[2].p_difference)
    assert out[0].interval.clusters == 10 and out[0].interval.n == 60


def test_zero_width_interval_alone_does_not_refute():
    """The committed report's case: DP at [0.0, 0.0] against the paper's 0.69, and SHE-LoRA equal to
    plain LoRA case by case against the paper's contrast of -0.10."""
    assert labels([Claim(sample([0.0] * 3), 0.6862)]) == ["inconclusive"]
    assert labels([Claim(sample([0.0] * 5), 0.6862)]) == ["refuted"]  # 2 x 0.36^5 = 0.012 alone
    same = sample([0.0] * 5, bounds=(-1.0, 1.0))
    assert same.interval()[1:3] != (0.0, 0.0)
    assert labels([Claim(same, 0.0 - 0.1027)]) == ["inconclusive"]


def test_holm_decides_over_the_table():
    """p = 0.012 refutes alone; among 11 clear non-findings it does not (0.012 x 12 > 0.05); among 11
    clear refutations it does again (step-down: 0.012 x 1 <= 0.05)."""
    zeros = Claim(sample([0.0] * 5), 0.6862)
    unclear = Claim(sample([0.1, 0.9, 0.5, 0.3, 0.7]), 0.6)
    clear = Claim(sample(np.linspace(0.39, 0.41, 10)), 0.9518)
    assert labels([zeros, *[unclear] * 11])[0] == "inconclusive"
    assert labels([zeros, *[clear] * 11]) == ["refuted"] * 12
    # a figure that is not comparable does not enlarge the family
    assert labels([zeros, *[Claim(unclear.sample, 0.6, mismatch="rank")] * 11])[0] == "refuted"


def test_rule_text_is_one_line_and_states_the_margin():
    text = rule_text(0.05)
    assert "\n" not in text and "+-0.05" in text and "TOST" in text and "Holm" in text
    with pytest.raises(ValueError):
        verdicts([], 0.0)
