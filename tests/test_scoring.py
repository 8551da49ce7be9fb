"""The batched scoring model against scikit-learn's pipeline, its oracle."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cdi_audit.statistics.scoring import cross_fitted_score_matrix, fit_and_score, fold_count, stratified_folds
from cdi_audit.statistics.testing import split_test, stratified_halves, welch_statistics


def sklearn_out_of_fold(features: np.ndarray, labels: np.ndarray, seed: int, folds: int = 5) -> np.ndarray:
    scores = np.empty(len(labels))
    for train, held_out in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-12, max_iter=10000))
        scores[held_out] = model.fit(features[train], labels[train]).predict_proba(features[held_out])[:, 1]
    return scores


@pytest.mark.parametrize(("rows", "columns", "shift"), [(24, 14, 0.0), (100, 26, 0.4), (40, 26, 3.0)])
def test_batched_scores_equal_sklearn_for_every_labelling(rows: int, columns: int, shift: float) -> None:
    """Badly scaled features, a separable case (shift 3) and many labellings solved in one stack."""
    rng = np.random.default_rng(rows)
    features = rng.normal(size=(rows, columns)) * rng.uniform(0.1, 10, columns) + rng.uniform(-5, 5, columns)
    labels = np.r_[np.ones(rows // 2, bool), np.zeros(rows - rows // 2, bool)]
    features[labels] += shift
    labellings = np.stack([labels, *(rng.permutation(labels) for _ in range(70))])
    scores = cross_fitted_score_matrix(features, labellings, random_state=3)
    expected = np.stack([sklearn_out_of_fold(features, labelling, 3) for labelling in labellings[:3]])
    np.testing.assert_allclose(scores[:3], expected, atol=1e-6)
    # the last problems sit in a later solver chunk than the first ones
    np.testing.assert_allclose(scores[-1], sklearn_out_of_fold(features, labellings[-1], 3), atol=1e-6)


def test_a_constant_training_column_is_left_unscaled_as_sklearn_does() -> None:
    rng = np.random.default_rng(0)
    features = np.c_[rng.normal(size=(30, 3)), np.full(30, 7.0)]
    labels = np.r_[np.ones(15, bool), np.zeros(15, bool)]
    scores = cross_fitted_score_matrix(features, labels[None], random_state=1)[0]
    np.testing.assert_allclose(scores, sklearn_out_of_fold(features, labels, 1), atol=1e-6)


def test_few_rows_per_class_use_fewer_folds() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(7, 2))
    labels = np.array([True, True, True, False, False, False, False])
    scores = cross_fitted_score_matrix(features, labels[None], random_state=0)[0]
    np.testing.assert_allclose(scores, sklearn_out_of_fold(features, labels, 0, folds=3), atol=1e-6)


def test_fold_assignment_is_scikit_learns_for_every_labelling() -> None:
    """``stratified_folds`` derives the folds from one split per (class counts, first class); scikit-learn's
    own splitter on 300 labellings, of several sizes and fold counts, must give the same test folds."""
    rng = np.random.default_rng(5)
    for suspect, reference in [(64, 64), (20, 45), (3, 9), (33, 7), (5, 5)]:
        labels = np.r_[np.ones(suspect, bool), np.zeros(reference, bool)]
        for draw in range(60):
            labelling = rng.permutation(labels)
            expected = np.empty(len(labels), dtype=int)
            folds = StratifiedKFold(fold_count(labelling), shuffle=True, random_state=draw)
            for fold, (_, held_out) in enumerate(folds.split(np.zeros((len(labels), 1)), labelling)):
                expected[held_out] = fold
            np.testing.assert_array_equal(stratified_folds(labelling, draw), expected)


def test_fitted_coefficients_and_split_p_values_equal_sklearn() -> None:
    """The batched solver against scikit-learn on the same data: the standardised coefficients (recovered
    from the predicted logits) to rtol 1e-6, and the split test's p-value against the same split fitted by
    ``LogisticRegression`` and tested by scipy's Welch test to rtol 1e-6 (the statistic also to 1e-6 absolute)."""
    rng = np.random.default_rng(8)
    features = rng.normal(size=(80, 6)) * rng.uniform(0.01, 100, 6) + rng.uniform(-1e3, 1e3, 6)
    labels = np.r_[np.ones(40, bool), np.zeros(40, bool)]
    features[labels, :2] += 0.5 * features[:, :2].std(axis=0)
    train = (rng.uniform(size=(3, 80)) < 0.7).astype(float)
    logits = np.log(fit_and_score(features, np.broadcast_to(labels, train.shape), train))
    logits -= np.log(-np.expm1(logits))
    for problem, mask in enumerate(train.astype(bool)):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-12, max_iter=10000))
        model.fit(features[mask], labels[mask])
        design = np.c_[model[0].transform(features), np.ones(80)]
        coefficients = np.linalg.lstsq(design, logits[problem], rcond=None)[0]
        np.testing.assert_allclose(coefficients, np.r_[model[-1].coef_[0], model[-1].intercept_], rtol=1e-6,
                                   atol=1e-8)
    for seed in range(5):
        fit_rows, test_rows = stratified_halves(labels, seed)
        assert len(set(fit_rows) | set(test_rows)) == 80 and labels[fit_rows].sum() == labels[test_rows].sum() == 20
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-12, max_iter=10000))
        scores = model.fit(features[fit_rows], labels[fit_rows]).predict_proba(features[test_rows])[:, 1]
        held_out = labels[test_rows]
        expected = stats.ttest_ind(scores[held_out], scores[~held_out], equal_var=False, alternative="greater")
        outcome = split_test(features, labels, seed=seed)
        assert outcome.p_value == pytest.approx(expected.pvalue, rel=1e-6)
        assert outcome.statistic == pytest.approx(expected.statistic, rel=1e-6, abs=1e-6)


def test_welch_statistics_equal_scipy_row_by_row() -> None:
    """Each row its own labelling with the same group sizes (as permutations are); both groups constant: NaN."""
    rng = np.random.default_rng(9)
    scores = rng.uniform(size=(50, 30))
    labels = np.r_[np.ones(12, bool), np.zeros(18, bool)]
    suspect = np.stack([rng.permutation(labels) for _ in range(50)])
    scores[0] = np.where(suspect[0], 0.7, 0.2)
    statistics, freedom = welch_statistics(scores, suspect)
    assert np.isnan(statistics[0])
    for row, members, t, df in zip(scores[1:], suspect[1:], statistics[1:], freedom[1:], strict=True):
        expected = stats.ttest_ind(row[members], row[~members], equal_var=False)
        assert t == pytest.approx(expected.statistic, rel=1e-12)
        assert df == pytest.approx(expected.df, rel=1e-12)
