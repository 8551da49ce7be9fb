"""Checks that keep a verdict honest (protocol.md, Controls): the model-free distribution-shift check and the
negative control (which images are tested at all is ``screening.py``'s)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cdi_audit.inputs.image_statistics import STATISTIC_NAMES
from cdi_audit.results.schema import ShiftStatisticInfo
from cdi_audit.statistics.testing import TestName, TestOutcome, auc, permutation_test, run_test
from cdi_audit.verdict.screening import DescribedImage

DEFAULT_SHIFT_ALPHA = 0.05


def negative_control(
    reference_features: np.ndarray,
    test: TestName,
    seed: int,
    permutations: int,
    n_jobs: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> TestOutcome:
    """The full test on two random halves of the reference set, the first half playing P.

    Both halves are unseen by the model, so this is null by construction: a
    significant result points at a bug or an ordering artefact, and the audit
    is then inconclusive rather than trusted.
    """
    n = len(reference_features)
    first_half = np.zeros(n, dtype=bool)
    first_half[np.random.default_rng([seed, 104729]).permutation(n)[: n // 2]] = True
    return run_test(test, reference_features, first_half, seed, permutations, n_jobs, on_progress)


@dataclass(frozen=True)
class ShiftCheck:
    """The audit's own test run on model-free image statistics: can the sets be told apart without the model?"""

    p_value: float
    alpha: float
    most_different: tuple[ShiftStatisticInfo, ...]

    @property
    def passed(self) -> bool:
        return self.p_value >= self.alpha


def shift_check(suspect: list[DescribedImage], reference: list[DescribedImage], alpha: float, seed: int,
                permutations: int, n_jobs: int = 1, on_progress: Callable[[int, int], None] | None = None,
                shown: int = 5) -> ShiftCheck:
    """The permutation test of the audit (cross-fitted logistic regression, Welch statistic), on image
    statistics instead of model features; statistics constant across both sets are left out."""
    matrix = np.stack([image.description.statistics for image in suspect + reference])
    is_suspect = np.r_[np.ones(len(suspect), bool), np.zeros(len(reference), bool)]
    varying = np.ptp(matrix, axis=0) > 0
    if not varying.any():
        return ShiftCheck(1.0, alpha, ())
    matrix = matrix[:, varying]
    names = [name for name, keep in zip(STATISTIC_NAMES, varying, strict=True) if keep]
    outcome = permutation_test(matrix, is_suspect, permutations, seed=seed, n_jobs=n_jobs, on_progress=on_progress)
    aucs = auc(matrix[is_suspect], matrix[~is_suspect], axis=0)
    order = np.argsort(-np.abs(aucs - 0.5), kind="stable")[:shown]
    return ShiftCheck(outcome.p_value, alpha, tuple(
        ShiftStatisticInfo(name=names[i], auc=float(aucs[i]), suspect_mean=float(matrix[is_suspect, i].mean()),
                           reference_mean=float(matrix[~is_suspect, i].mean())) for i in order))
