"""The batched scoring model against scikit-learn's pipeline, its oracle."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cdi_audit.statistics.scoring import cross_fitted_score_matrix


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
