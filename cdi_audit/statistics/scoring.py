"""The scoring model, fitted for many problems at once.

The model is the one of docs/method.md ("The test"): features standardised on the training rows, then
L2-regularised logistic regression with C = 1 (minimise the summed log-loss
plus ||w||^2 / 2, intercept not penalised). It is exactly scikit-learn's
``make_pipeline(StandardScaler(), LogisticRegression(C=1))``, which the
tests use as the oracle. We solve it ourselves because an audit refits it
thousands of times on a few hundred rows (the permutation test (B + 1) x 5
times, the shift check as often, the sample-size curve once per resample):
scikit-learn spends about 2 ms of overhead per fit, while one damped-Newton
solve over a stack of problems costs a few matrix products per step.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy.special import expit
from sklearn.model_selection import StratifiedKFold

N_FOLDS = 5
NEWTON_ITERATIONS = 100
# Newton steps below this (max abs change of any coefficient) mean convergence;
# far tighter than scikit-learn's lbfgs default (tol 1e-4).
STEP_TOLERANCE = 1e-9
# Problems whose (problems, rows, columns) standardisation arrays are built at once (memory, not speed).
PROBLEMS_PER_CHUNK = 64
# The L2 penalty on the standardised coefficients, 1 / C (C = 1, scikit-learn's default).
PENALTY = 1.0


def fold_count(labels: np.ndarray) -> int:
    """K = 5 folds, fewer only when a class has fewer than five rows (the negative control on tiny sets)."""
    return min(N_FOLDS, int(labels.sum()), int((~labels).sum()))


def _objective(logits: np.ndarray, labels: np.ndarray, train: np.ndarray, theta: np.ndarray,
               penalty: np.ndarray) -> np.ndarray:
    softplus = np.log1p(np.exp(-np.abs(logits))) + np.maximum(logits, 0.0)  # log(1 + e^z), twice np.logaddexp's speed
    loss = (train * (softplus - labels * logits)).sum(axis=1)
    return loss + 0.5 * (penalty * theta**2).sum(axis=1)


def fit_logistic(design: np.ndarray, labels: np.ndarray, train: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """Coefficients (P, w) of P independent L2-penalised logistic regressions on one shared design, by damped
    Newton.

    ``design`` (n, w) with a last column of ones; ``labels`` (P, n) in {0, 1};
    ``train`` (P, n) 1 for rows that take part in problem p's fit; ``penalty``
    (P, w) the weight of each squared coefficient (0 for the intercept).
    Sharing the design turns every Newton step into three matrix products over
    all problems at once (the Hessians from the rows' outer products). The
    objective is strictly convex, so the minimiser is unique and the halving
    line search makes every step descend. Each problem stops on its own, so its
    answer does not depend on which others share the stack.
    """
    problems, width = len(labels), design.shape[1]
    upper_i, upper_j = np.triu_indices(width)
    products = design[:, upper_i] * design[:, upper_j]  # (n, w (w + 1) / 2): one column per Hessian entry
    diagonal = np.arange(width)
    theta = np.zeros((problems, width))
    logits = np.zeros(labels.shape)
    current = _objective(logits, labels, train, theta, penalty)
    active = np.ones(problems, dtype=bool)
    for _ in range(NEWTON_ITERATIONS):
        index = np.flatnonzero(active)
        if not len(index):
            break
        y, m, th, weight = labels[index], train[index], theta[index], penalty[index]
        probability = expit(logits[index])
        gradient = (m * (probability - y)) @ design + weight * th
        packed = (m * probability * (1.0 - probability)) @ products
        hessian = np.empty((len(index), width, width))
        hessian[:, upper_i, upper_j] = packed
        hessian[:, upper_j, upper_i] = packed
        hessian[:, diagonal, diagonal] += weight
        step = np.linalg.solve(hessian, gradient[..., None])[..., 0]
        size = np.ones(len(index))
        for _ in range(30):  # halve until the objective does not increase
            trial = th - size[:, None] * step
            trial_logits = trial @ design.T
            value = _objective(trial_logits, y, m, trial, weight)
            worse = value > current[index] + 1e-12 * np.abs(current[index])
            if not worse.any():
                break
            size[worse] *= 0.5
        theta[index], current[index], logits[index] = trial, value, trial_logits
        active[index] = np.abs(size[:, None] * step).max(axis=1) > STEP_TOLERANCE
    return theta


def _training_scales(standard: np.ndarray, train: np.ndarray, raw_mean: np.ndarray, raw_scale: np.ndarray
                     ) -> np.ndarray:
    """Each problem's standard deviation of each column over its training rows (P, d), in the units of the
    globally standardised ``standard``; where the column is constant on those rows (``StandardScaler``'s rule,
    in the original units) the original unit, as ``StandardScaler`` leaves such a column unscaled."""
    scales = np.empty((len(train), standard.shape[1]))
    for start in range(0, len(train), PROBLEMS_PER_CHUNK):
        mask = train[start : start + PROBLEMS_PER_CHUNK]
        counts = mask.sum(axis=1, keepdims=True)
        mean = mask @ standard / counts
        spread = np.sqrt(np.einsum("pn,pnd->pd", mask, (standard[None] - mean[:, None, :]) ** 2) / counts)
        constant = raw_scale * spread < 10 * np.finfo(float).eps * np.maximum(np.abs(raw_mean + raw_scale * mean), 1)
        scales[start : start + PROBLEMS_PER_CHUNK] = np.where(constant, 1.0 / raw_scale, spread)
    return scales


def fit_and_score(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> np.ndarray:
    """P(label | row) for every row of the (n, d) ``features`` under P scoring models, model p fitted on the
    rows where ``train[p]`` is 1 with ``labels[p]`` ((P, n) bool).

    Each model is ``StandardScaler`` on its training rows, then the L2 logistic
    regression. Standardising is an affine change of each problem's
    coordinates, so it is solved on one shared, globally standardised design
    with the per-problem scale moved into the penalty: logits w . (x - m_p) / s_p
    + b are v . x + c with v = w / s_p, and ||w||^2 = ||s_p v||^2. Newton's
    method is invariant under such a change, so its steps are the same.
    """
    raw_mean = features.mean(axis=0)
    raw_scale = features.std(axis=0)
    raw_scale[raw_scale == 0] = 1.0
    standard = (features - raw_mean) / raw_scale
    scales = _training_scales(standard, train, raw_mean, raw_scale)
    penalty = np.c_[PENALTY * scales**2, np.zeros(len(train))]
    design = np.c_[standard, np.ones(len(features))]
    theta = fit_logistic(design, labels.astype(float), train, penalty)
    return expit(theta @ design.T)


@cache
def _class_folds(suspect_count: int, reference_count: int, suspect_first: bool, folds: int,
                 random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """The test-fold sequences (suspect rows', reference rows') that ``StratifiedKFold(folds, shuffle=True,
    random_state)`` gives the rows of each class, in row order.

    They depend only on the class counts and on which class comes first in the
    labelling (its classes are numbered by first appearance), so one split of
    a labelling with the same counts and first class gives them for all.
    """
    first, second = (suspect_count, reference_count) if suspect_first else (reference_count, suspect_count)
    canonical = np.r_[np.ones(first, bool), np.zeros(second, bool)]
    test_fold = np.empty(len(canonical), dtype=int)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros((len(canonical), 1)), canonical)):
        test_fold[held_out] = fold
    first_folds, second_folds = test_fold[:first], test_fold[first:]
    return (first_folds, second_folds) if suspect_first else (second_folds, first_folds)


def stratified_folds(labels: np.ndarray, random_state: int) -> np.ndarray:
    """Each row's test fold, exactly as ``StratifiedKFold(fold_count(labels), shuffle=True, random_state)``
    assigns them (``tests/test_scoring.py`` holds it to scikit-learn on many labellings)."""
    suspect_folds, reference_folds = _class_folds(int(labels.sum()), int((~labels).sum()), bool(labels[0]),
                                                  fold_count(labels), random_state)
    test_fold = np.empty(len(labels), dtype=int)
    test_fold[labels], test_fold[~labels] = suspect_folds, reference_folds
    return test_fold


def cross_fitted_score_matrix(features: np.ndarray, labellings: np.ndarray, random_state: int) -> np.ndarray:
    """Out-of-fold P(label | features) for each labelling: (L, n) scores for (L, n) bool labellings.

    Folds are scikit-learn's ``StratifiedKFold(shuffle=True, random_state)``
    on each labelling; each row is scored by the model fitted on the other folds.
    """
    owners, train = [], []
    test_folds = [stratified_folds(labels, random_state) for labels in labellings]
    for index, test_fold in enumerate(test_folds):
        for fold in range(test_fold.max() + 1):
            owners.append(index)
            train.append(test_fold != fold)
    owners, train = np.array(owners), np.array(train, dtype=float)
    probability = fit_and_score(features, labellings[owners], train)
    scores = np.empty(labellings.shape)
    held_out = train == 0.0
    for row, owner in enumerate(owners):
        scores[owner, held_out[row]] = probability[row, held_out[row]]
    return scores
