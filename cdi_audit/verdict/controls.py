"""Checks that keep a verdict honest (docs/method.md, "Controls"): the model-free distribution-shift check and the
negative control (which images are tested at all is ``screening.py``'s)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cdi_audit.inputs.caption_statistics import caption_statistics
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


@dataclass(frozen=True)
class ConditionsSeen:
    """What a conditional model sees besides pixels: ``kind`` "text" (captions) or "class" (class ids), and the
    value for each image by its sha256."""

    kind: str
    by_image: dict[str, str | int | None]


def condition_statistics(conditions: ConditionsSeen, images: list[DescribedImage]) -> tuple[np.ndarray, list[str]]:
    """Model-free columns of the conditions, one row per image: the captions' style and vocabulary, or which class
    each image has (one column per class present). Every row comes from a rule that ignores the sets, as the
    permutation test needs."""
    values = [conditions.by_image[image.record.sha256] for image in images]
    if conditions.kind == "text":
        matrix, names = caption_statistics([value or "" for value in values])
        return matrix, [f"caption_{name}" for name in names]
    classes = sorted({value for value in values if value is not None})
    matrix = np.array([[value is None, *(value == label for label in classes)] for value in values], dtype=float)
    return matrix, ["no_class", *(f"class_{label}" for label in classes)]


def shift_check(suspect: list[DescribedImage], reference: list[DescribedImage], alpha: float, seed: int,
                permutations: int, n_jobs: int = 1, on_progress: Callable[[int, int], None] | None = None,
                shown: int = 5, conditions: ConditionsSeen | None = None) -> ShiftCheck:
    """The permutation test of the audit (cross-fitted logistic regression, Welch statistic), on image
    statistics instead of model features, and on what a conditional model sees besides pixels (``conditions``:
    captions or class ids, written differently for the two sets, would look like evidence); statistics constant
    across both sets are left out."""
    images = suspect + reference
    matrix = np.stack([image.description.statistics for image in images])
    names = list(STATISTIC_NAMES)
    if conditions is not None:
        extra, extra_names = condition_statistics(conditions, images)
        matrix, names = np.hstack([matrix, extra]), names + extra_names
    is_suspect = np.r_[np.ones(len(suspect), bool), np.zeros(len(reference), bool)]
    varying = np.ptp(matrix, axis=0) > 0
    if not varying.any():
        return ShiftCheck(1.0, alpha, ())
    matrix = matrix[:, varying]
    names = [name for name, keep in zip(names, varying, strict=True) if keep]
    outcome = permutation_test(matrix, is_suspect, permutations, seed=seed, n_jobs=n_jobs, on_progress=on_progress)
    aucs = auc(matrix[is_suspect], matrix[~is_suspect], axis=0)
    order = np.argsort(-np.abs(aucs - 0.5), kind="stable")[:shown]
    return ShiftCheck(outcome.p_value, alpha, tuple(
        ShiftStatisticInfo(name=names[i], auc=float(aucs[i]), suspect_mean=float(matrix[is_suspect, i].mean()),
                           reference_mean=float(matrix[~is_suspect, i].mean())) for i in order))
