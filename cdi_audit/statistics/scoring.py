"""The scoring model, cross-fitted for many labellings at once.

The model is the one of docs/method.md ("The test"): features standardised on the training rows, then
L2-regularised logistic regression with C = 1 (minimise the summed log-loss
plus ||w||^2 / 2, intercept not penalised). It is exactly scikit-learn's
``make_pipeline(StandardScaler(), LogisticRegression(C=1))``, which the
tests use as the oracle. We solve it ourselves because a permutation test
refits it (B + 1) x 5 times on a few hundred rows: scikit-learn spends about
2 ms of overhead per fit, while one damped-Newton solve over a stack of
problems costs a few matrix products, about 10x less in total.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.model_selection import StratifiedKFold

N_FOLDS = 5
NEWTON_ITERATIONS = 100
# Newton steps below this (max abs change of any coefficient) mean convergence;
# far tighter than scikit-learn's lbfgs default (tol 1e-4).
STEP_TOLERANCE = 1e-9
PROBLEMS_PER_SOLVE = 64
# The L2 penalty on the standardised coefficients, 1 / C (C = 1, scikit-learn's default).
PENALTY = 1.0


def fold_count(labels: np.ndarray) -> int:
    """K = 5 folds, fewer only when a class has fewer than five rows (the negative control on tiny sets)."""
    return min(N_FOLDS, int(labels.sum()), int((~labels).sum()))


def _objective(design: np.ndarray, labels: np.ndarray, train: np.ndarray, theta: np.ndarray,
               penalty: np.ndarray) -> np.ndarray:
    logits = np.einsum("pnd,pd->pn", design, theta)
    loss = (train * (np.logaddexp(0.0, logits) - labels * logits)).sum(axis=1)
    return loss + 0.5 * (penalty * theta**2).sum(axis=1)


def fit_logistic(design: np.ndarray, labels: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Coefficients (P, d + 1) of P independent L2 logistic regressions, C = 1, by damped Newton.

    ``design`` (P, n, d + 1) with a last column of ones (the intercept, not
    penalised), ``labels`` (P, n) in {0, 1}, ``train`` (P, n) 1 for rows
    that take part in the fit. The objective is strictly convex, so the
    minimiser is unique and the halving line search makes every step descend.
    """
    problems, _, width = design.shape
    penalty = np.full(width, PENALTY)
    penalty[-1] = 0.0
    theta = np.zeros((problems, width))
    current = _objective(design, labels, train, theta, penalty)
    active = np.ones(problems, dtype=bool)
    for _ in range(NEWTON_ITERATIONS):
        if not active.any():
            break
        index = np.flatnonzero(active)
        x, y, m, th = design[index], labels[index], train[index], theta[index]
        probability = expit(np.einsum("pnd,pd->pn", x, th))
        gradient = np.einsum("pnd,pn->pd", x, m * (probability - y)) + penalty * th
        curvature = m * probability * (1.0 - probability)
        hessian = np.matmul(x.transpose(0, 2, 1) * curvature[:, None, :], x) + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient[..., None])[..., 0]
        size = np.ones(len(index))
        for _ in range(30):  # halve until the objective does not increase
            trial = th - size[:, None] * step
            value = _objective(x, y, m, trial, penalty)
            worse = value > current[index] + 1e-12 * np.abs(current[index])
            if not worse.any():
                break
            size[worse] *= 0.5
        theta[index], current[index] = trial, value
        active[index] = np.abs(size[:, None] * step).max(axis=1) > STEP_TOLERANCE
    return theta


def cross_fitted_score_matrix(features: np.ndarray, labellings: np.ndarray, random_state: int) -> np.ndarray:
    """Out-of-fold P(label | features) for each labelling: (L, n) scores for (L, n) bool labellings.

    Folds are scikit-learn's ``StratifiedKFold(shuffle=True, random_state)``
    on each labelling; each row is scored by the model fitted on the other
    folds, after standardising with the training folds' mean and std (a
    constant training column is left unscaled, as ``StandardScaler`` does).
    """
    n, d = features.shape
    problems = []  # (labelling, train mask)
    for index, labels in enumerate(labellings):
        folds = StratifiedKFold(n_splits=fold_count(labels), shuffle=True, random_state=random_state)
        for train_rows, _ in folds.split(features, labels):
            mask = np.zeros(n)
            mask[train_rows] = 1.0
            problems.append((index, mask))
    scores = np.empty(labellings.shape)
    for start in range(0, len(problems), PROBLEMS_PER_SOLVE):
        chunk = problems[start : start + PROBLEMS_PER_SOLVE]
        owners = np.array([index for index, _ in chunk])
        train = np.stack([mask for _, mask in chunk])
        counts = train.sum(axis=1, keepdims=True)
        mean = train @ features / counts
        centred = features[None] - mean[:, None, :]
        scale = np.sqrt((train[..., None] * centred**2).sum(axis=1) / counts)
        scale[scale < 10 * np.finfo(float).eps * np.maximum(np.abs(mean), 1.0)] = 1.0
        design = np.concatenate([centred / scale[:, None, :], np.ones((len(chunk), n, 1))], axis=2)
        labels = labellings[owners].astype(float)
        theta = fit_logistic(design, labels, train)
        probability = expit(np.einsum("pnd,pd->pn", design, theta))
        held_out = train == 0.0
        for row, owner in enumerate(owners):
            scores[owner, held_out[row]] = probability[row, held_out[row]]
    return scores
