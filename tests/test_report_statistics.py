"""The numbers a report adds to the verdict: the p-value-against-n curve and the per-feature diagnostics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from cdi_audit.results.schema import SampleSizeCurvePoint
from cdi_audit.statistics.diagnostics import feature_diagnostics
from cdi_audit.statistics.evaluation import sample_size_grid
from cdi_audit.statistics.power import (
    curve_images_for_power,
    images_for_power,
    sample_size_curve,
    t_test_power,
)
from cdi_audit.statistics.testing import split_test


def sets(n_suspect: int, n_reference: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian columns; the suspect rows are shifted up in column 0 and down in column 1."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_suspect + n_reference, 3))
    features[:n_suspect, 0] += shift
    features[:n_suspect, 1] -= shift
    return features, np.r_[np.ones(n_suspect, bool), np.zeros(n_reference, bool)]


def test_feature_diagnostics_match_a_hand_computation() -> None:
    features, is_suspect = sets(30, 40, shift=1.0, seed=0)
    rows = feature_diagnostics(features, is_suspect, ("up", "down", "noise"), seed=0)
    assert [row.name for row in rows] == ["up", "down", "noise"]
    for index, row in enumerate(rows):
        assert row.auc == roc_auc_score(is_suspect, features[:, index])
    standardised = StandardScaler().fit_transform(features)
    weights = LogisticRegression(C=1.0, max_iter=1000).fit(standardised, is_suspect).coef_[0]
    np.testing.assert_allclose([row.weight for row in rows], weights, rtol=1e-6)
    assert rows[0].auc > 0.7 and rows[0].weight > 0 and rows[1].auc < 0.3 and rows[1].weight < 0


def test_each_curve_point_is_the_median_of_split_tests_on_random_subsets() -> None:
    features, is_suspect = sets(15, 20, shift=0.8, seed=1)
    curve = sample_size_curve(features, is_suspect, alpha=0.05, seed=3, resamples=7)
    assert [point.n for point in curve] == sample_size_grid(15) == [10, 15]
    suspect_rows, reference_rows = np.flatnonzero(is_suspect), np.flatnonzero(~is_suspect)
    for point in curve:
        p_values = []
        for repeat in range(7):
            # The draw protocol of evaluation.draws, written out: n of each set without replacement.
            rng = np.random.default_rng([3, 0, point.n, repeat])
            rows = np.r_[rng.choice(suspect_rows, point.n, replace=False),
                         rng.choice(reference_rows, point.n, replace=False)]
            labels = np.r_[np.ones(point.n, bool), np.zeros(point.n, bool)]
            p_values.append(split_test(features[rows], labels, int(rng.integers(2**31 - 1))).p_value)
        assert point.resamples == 7
        # the curve solves all resamples on the whole matrix at once: the same fits, other rounding
        assert point.median_p == pytest.approx(np.median(p_values), rel=1e-9)
        assert point.fraction_below_alpha == np.mean(np.array(p_values) < 0.05)


def test_the_curve_falls_with_a_signal() -> None:
    features, is_suspect = sets(50, 50, shift=1.0, seed=2)
    curve = sample_size_curve(features, is_suspect, 0.01, seed=0, resamples=40)
    medians = [point.median_p for point in curve]
    assert [point.n for point in curve] == [10, 20, 30, 50]
    assert medians[0] > 0.01 > medians[-1] and medians[-1] < medians[0] / 100
    assert curve[0].fraction_below_alpha < 0.5 < curve[-1].fraction_below_alpha


def test_curve_p_values_are_calibrated_when_the_sets_do_not_differ() -> None:
    # One resample from each of 400 independent null data sets: the p-values must reject at most alpha.
    alpha, runs = 0.05, 400
    rejections = sum(
        sample_size_curve(*sets(10, 10, shift=0.0, seed=100 + run), alpha, seed=run, resamples=1)[0]
        .fraction_below_alpha for run in range(runs)
    )
    assert rejections <= stats.binom.ppf(0.995, runs, alpha)


def test_images_for_power_matches_published_tables() -> None:
    # G*Power (one-sided two-sample t-test, alpha 0.05, power 0.8): d = 0.8 -> 21, 0.5 -> 51, 0.2 -> 310 per group.
    assert [images_for_power(d, 0.05) for d in (0.8, 0.5, 0.2)] == [21, 51, 310]
    assert images_for_power(0.0, 0.05) is None and images_for_power(-0.3, 0.05) is None
    n = images_for_power(0.5, 0.01)
    assert t_test_power(0.5, n, 0.01) >= 0.8 > t_test_power(0.5, n - 1, 0.01)


def test_t_test_power_agrees_with_simulated_t_tests() -> None:
    rng = np.random.default_rng(0)
    runs, n, d, alpha = 2000, 51, 0.5, 0.05
    suspect = rng.standard_normal((runs, n)) + d
    reference = rng.standard_normal((runs, n))
    rejected = stats.ttest_ind(suspect, reference, axis=1, alternative="greater").pvalue < alpha
    predicted = t_test_power(d, n, alpha)
    low, high = stats.binom.ppf([0.0025, 0.9975], runs, predicted) / runs
    assert low <= rejected.mean() <= high


def test_the_curve_gives_the_smallest_n_that_reaches_the_power() -> None:
    points = [SampleSizeCurvePoint(n=n, median_p=p, fraction_below_alpha=share, resamples=100)
              for n, p, share in ((10, 0.2, 0.3), (20, 0.01, 0.79), (30, 0.001, 0.8), (50, 1e-5, 0.95))]
    assert curve_images_for_power(points) == 30
    assert curve_images_for_power(points[:2]) is None
