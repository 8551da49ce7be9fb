"""The statistics, tested statistically: p-values against independent computations, and
rejection rates under simulated nulls against binomial bounds."""

from __future__ import annotations

import numpy as np
import pytest
from joblib import Parallel, delayed
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import cdi_audit.statistics.testing as testing
from cdi_audit.statistics.testing import (
    cross_fitted_scores,
    effect_size,
    permutation_test,
    permuted_labels,
    reference_rule_test,
    split_test,
    welch_statistic,
)


def simulated(seed: int, n: int = 20, k: int = 4, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """n suspect and n reference rows of k standard-normal features; suspect rows shifted in 2 features."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((2 * n, k))
    features[:n, :2] += shift
    return features, np.r_[np.ones(n, bool), np.zeros(n, bool)]


def oracle_statistic(features: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """The protocol's statistic written with sklearn and scipy directly (solved to a tight tolerance,
    so it is the exact minimiser that cdi_audit.statistics.scoring also finds)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-12, max_iter=10000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")[:, 1]
    return stats.ttest_ind(scores[labels], scores[~labels], equal_var=False).statistic


def binomial_interval(trials: int, rate: float) -> tuple[float, float]:
    """The central 99% range of the rejection rate of ``trials`` audits at true rate ``rate``."""
    return stats.binom.ppf(0.005, trials, rate) / trials, stats.binom.ppf(0.995, trials, rate) / trials


def test_permutation_p_value_counts_permuted_statistics_at_or_above_the_observed() -> None:
    features, labels = simulated(seed=11, shift=0.3)
    outcome = permutation_test(features, labels, permutations=40, stop_after_hits=1000, seed=4)
    observed = oracle_statistic(features, labels, seed=4)
    permuted = [oracle_statistic(features, permuted_labels(labels, 4, i), seed=4) for i in range(40)]
    assert outcome.statistic == pytest.approx(observed, rel=1e-6)
    assert outcome.p_value == pytest.approx((1 + sum(t >= observed for t in permuted)) / 41)
    assert outcome.permutations_run == 40 and not outcome.stopped_early


def test_early_stop_gives_hits_over_permutations_at_the_stopping_point() -> None:
    features, labels = simulated(seed=12)
    outcome = permutation_test(features, labels, permutations=200, stop_after_hits=5, seed=1)
    observed = oracle_statistic(features, labels, seed=1)
    hits_so_far = np.cumsum([oracle_statistic(features, permuted_labels(labels, 1, i), 1) >= observed
                             for i in range(outcome.permutations_run)])
    assert outcome.stopped_early
    assert hits_so_far[-1] == 5 and hits_so_far[-2] == 4
    assert outcome.p_value == pytest.approx(5 / outcome.permutations_run)


def test_permutation_result_does_not_depend_on_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    features, labels = simulated(seed=13, shift=0.5)
    in_process = []
    one = permutation_test(features, labels, permutations=520, stop_after_hits=1000, seed=2, n_jobs=2,
                           on_progress=lambda done, total: in_process.append(done))
    assert in_process == [100, 200, 300, 400, 500, 520]  # a test this small never starts workers
    # Workers start only for a test that would take over PARALLEL_AFTER_SECONDS in one process; force them.
    monkeypatch.setattr(testing, "PARALLEL_AFTER_SECONDS", 0.0)
    rounds = []
    two = permutation_test(features, labels, permutations=520, stop_after_hits=1000, seed=2, n_jobs=2,
                           on_progress=lambda done, total: rounds.append(done))
    assert rounds == [100, 300, 500, 520]  # one round in this process, then rounds of 2 x 100 in the workers
    assert (one.p_value, one.permutations_run) == (two.p_value, two.permutations_run)
    # The observed scores are computed in this process both times: bit-identical.
    np.testing.assert_array_equal(one.scores, two.scores)


def _null_permutation_p(seed: int) -> float:
    features, labels = simulated(seed=10_000 + seed)
    return permutation_test(features, labels, permutations=99, seed=seed).p_value


@pytest.mark.parametrize("audits", [300, pytest.param(1000, marks=pytest.mark.slow)])
def test_permutation_test_false_positive_rate_under_the_null(audits: int) -> None:
    """Audits of feature tables with no P/U difference: rejections at alpha=0.05 stay within the binomial 99%
    range of 0.05 (with B=99 the exact rate is 4/100); 300 by default (about 20 s), 1000 among the slow tests."""
    p_values = np.array(Parallel(n_jobs=2)(delayed(_null_permutation_p)(seed) for seed in range(audits)))
    rate = float(np.mean(p_values < 0.05))
    low, high = binomial_interval(audits, 0.05)
    assert low <= rate <= high, f"false-positive rate {rate:.3f} outside [{low:.3f}, {high:.3f}]"
    assert np.mean(p_values < 0.2) <= binomial_interval(audits, 0.2)[1]


def test_the_reference_rule_rejects_too_often_under_the_null() -> None:
    """Why cdi-reference is only offered for comparison (docs/method.md, "The CDI paper's rule"): 400 null
    audits with 26 pure-noise features, where the pooled t-test on dependent cross-fitted scores rejects far
    above 5%."""
    rates = [reference_rule_test(*simulated(seed=30_000 + seed, n=40, k=26), seed=seed).p_value < 0.05
             for seed in range(400)]
    assert np.mean(rates) > binomial_interval(400, 0.05)[1]


def test_split_test_false_positive_rate_under_the_null() -> None:
    """1000 null audits: at most the binomial 99% upper bound of 0.05 (measured 0.035: the Welch
    t-test on half-sample scores is slightly conservative, so only a floor of 0.02 is asked below)."""
    p_values = np.array([split_test(*simulated(seed=20_000 + seed), seed=seed).p_value for seed in range(1000)])
    rate = float(np.mean(p_values < 0.05))
    assert 0.02 <= rate <= binomial_interval(1000, 0.05)[1], f"false-positive rate {rate:.3f}"


@pytest.mark.parametrize("test", ["permutation", "split"])
def test_a_planted_shift_is_detected(test: str) -> None:
    features, labels = simulated(seed=14, n=40, shift=1.0)
    outcome = (permutation_test(features, labels, permutations=199, seed=0) if test == "permutation"
               else split_test(features, labels, seed=0))
    assert outcome.p_value < 0.01
    assert outcome.statistic > 0


def test_scores_are_out_of_fold() -> None:
    """Each row has its own indicator column: a model that saw the row would score it perfectly,
    one that did not can only guess."""
    labels = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    scores = cross_fitted_scores(np.eye(60), labels, random_state=0)
    assert roc_auc_score(labels, scores) < 0.6


def test_welch_statistic_is_positive_when_suspect_scores_higher() -> None:
    labels = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    scores = np.r_[0.6, 0.7, 0.8, 0.65, 0.75, 0.2, 0.3, 0.25, 0.4, 0.35]
    expected = stats.ttest_ind(scores[:5], scores[5:], equal_var=False).statistic
    assert welch_statistic(scores, labels) == pytest.approx(expected) and expected > 0
    assert np.isnan(welch_statistic(np.full(10, 0.5), labels))


def test_effect_size_against_hand_computation() -> None:
    labels = np.r_[np.ones(6, bool), np.zeros(4, bool)]
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.55, 0.3, 0.2, 0.1])
    effect = effect_size(scores, labels, seed=0)
    # pairs (suspect > reference): 0.9, 0.8, 0.7, 0.6 beat all 4; 0.5 and 0.4 beat 3 -> 22 of 24
    assert effect.auc == pytest.approx(22 / 24)
    difference = scores[:6].mean() - scores[6:].mean()
    pooled = np.sqrt((5 * scores[:6].var(ddof=1) + 3 * scores[6:].var(ddof=1)) / 8)
    assert effect.mean_score_difference == pytest.approx(difference)
    assert effect.cohens_d == pytest.approx(difference / pooled)
    assert effect.auc_ci[0] <= effect.auc <= effect.auc_ci[1]
    assert effect.mean_score_difference_ci[0] < difference < effect.mean_score_difference_ci[1]
