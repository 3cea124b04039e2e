"""ROC statistics and bootstrap intervals (benchmark/stats.py) on hand-built cases."""

import numpy as np
import pytest

from benchmark.reporting.stats import auc, bootstrap_ci, membership_summary, tpr_at_fpr
from benchmark.running.metrics import membership_auc


def test_auc_matches_pairwise_count_with_ties():
    gen = np.random.default_rng(3)
    s = gen.integers(0, 5, 60).astype(float)  # many ties
    y = gen.random(60) < 0.5
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert auc(s, y) == pytest.approx(pairwise)
    assert auc([1.0, float("nan")], [False, True]) == 0.0  # NaN ranks lowest
    assert auc([1.0, 2.0], [True, True]) == 0.5


def test_perfect_separation_has_auc_one_and_a_tight_interval():
    s = np.r_[np.arange(200) + 1000.0, np.arange(200)]
    y = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    est = bootstrap_ci((s, y), auc, strata=y, n_boot=200, seed=1)
    assert est.value == 1.0 and est.lo == 1.0 and est.hi == 1.0 and est.n == 400


def test_identical_distributions_interval_contains_half():
    gen = np.random.default_rng(7)
    s = gen.normal(size=400)
    y = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    est = bootstrap_ci((s, y), auc, strata=y, n_boot=500, seed=2)
    assert est.lo < 0.5 < est.hi
    assert 0.05 < est.hi - est.lo < 0.2  # ~ +-0.056 for 200 vs 200


def test_stratified_resamples_keep_class_sizes():
    y = np.r_[np.ones(3, bool), np.zeros(97, bool)]
    seen = []
    bootstrap_ci((np.arange(100.0), y), lambda s, lab: seen.append(int(lab.sum())) or 0.0, strata=y, n_boot=50)
    assert set(seen) == {3}


def test_tpr_at_fpr_exact_on_a_hand_built_case():
    neg = np.arange(100.0)  # 1% FPR allows exactly one non-member (score 99) above the threshold
    pos = np.array([99.5, 98.5, 150.0, 10.0])
    s, y = np.r_[pos, neg], np.r_[np.ones(4, bool), np.zeros(100, bool)]
    assert tpr_at_fpr(s, y, 0.01) == pytest.approx(0.75)  # t just above 98: 99.5, 98.5, 150 pass; 99 is the 1 FP
    assert tpr_at_fpr(s, y, 0.0) == pytest.approx(0.5)  # nothing above 99 from negatives: 99.5 and 150
    assert tpr_at_fpr(s, y, 0.05) == pytest.approx(0.75)
    assert tpr_at_fpr(s, y, 1.0) == 1.0


def test_tpr_at_fpr_agrees_with_the_threshold_sweep():
    gen = np.random.default_rng(0)
    for _ in range(20):
        s = np.round(gen.normal(size=80), 1)
        y = gen.random(80) < 0.4
        sweep = membership_auc(s, y)
        assert tpr_at_fpr(s, y, 0.01) == pytest.approx(sweep["tpr_at_1fpr"])
        assert tpr_at_fpr(s, y, 0.05) == pytest.approx(sweep["tpr_at_5fpr"])
        assert auc(s, y) == pytest.approx(sweep["mia_auc"])


def test_bootstrap_of_a_mean_covers_the_truth_and_shrinks_with_n():
    gen = np.random.default_rng(5)
    small = bootstrap_ci(gen.normal(2.0, 1.0, 30), n_boot=400, seed=0)
    large = bootstrap_ci(gen.normal(2.0, 1.0, 3000), n_boot=400, seed=0)
    assert small.lo < 2.0 < small.hi and large.lo < 2.0 < large.hi
    assert (large.hi - large.lo) < (small.hi - small.lo) / 5
    assert bootstrap_ci([4.0, 4.0, 4.0]) == (4.0, 4.0, 4.0, 3, 0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], level=1.0)


def test_membership_summary_columns():
    y = [True] * 50 + [False] * 50
    out = membership_summary(list(range(100, 50, -1)) + list(range(50)), y, prefix="mia_loss", n_boot=100)
    assert out["mia_loss_auc"] == 1.0 and out["mia_loss_tpr_at_1fpr"] == 1.0
    assert out["mia_loss_auc_lo"] <= out["mia_loss_auc"] <= out["mia_loss_auc_hi"]
    assert set(out) == {"mia_loss_auc", "mia_loss_auc_lo", "mia_loss_auc_hi", "mia_loss_tpr_at_1fpr",
                        "mia_loss_tpr_at_1fpr_lo", "mia_loss_tpr_at_1fpr_hi", "mia_loss_tpr_at_5fpr"}
