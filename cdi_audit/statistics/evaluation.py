"""Detection power on known members: the statistics of ``cdi-audit evaluate`` (docs/evaluate.md).

Given feature rows of images known to be training members and of images known
not to be, this measures how well each feature set separates them (AUC, TPR
at 1% FPR) and how many images an owner would need: for each n on a grid,
many random audits of n members against n non-members (the members curve)
and of n non-members against n other non-members (the null curve, whose
rejection rate is the measured false-positive rate). Pure functions over
arrays; features are extracted once and every draw reuses them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats
from sklearn.metrics import roc_curve

from cdi_audit.results.schema import CurvePointResult, FalsePositiveRateResult, FeatureSetDiscrimination
from cdi_audit.statistics.testing import AnyTestName, cross_fitted_scores, run_test
from cdi_audit.statistics.testing import auc as set_auc

CurveKind = Literal["members", "null"]
EVALUATION_TESTS: tuple[AnyTestName, ...] = ("permutation", "split", "cdi-reference")
# "Images needed" is the smallest n whose median p-value is below this (the CDI paper's criterion).
NEEDED_P = 0.01
LOW_FPR = 0.01
MIN_SAMPLE_SIZE = 10


def sample_size_grid(limit: int) -> list[int]:
    """10, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, ... up to ``limit``, then ``limit`` itself."""
    grid, decade = [10, 20, 30, 50, 70], 100
    while grid[-1] < limit:
        grid.extend(int(decade * m) for m in (1, 1.5, 2, 3, 5, 7))
        decade *= 10
    sizes = [n for n in grid if n <= limit]
    if limit >= MIN_SAMPLE_SIZE and sizes[-1:] != [limit]:
        sizes.append(limit)
    return sizes


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float = LOW_FPR) -> float:
    """The largest true-positive rate among thresholds whose false-positive rate is at most ``fpr``."""
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    false_rates, true_rates, _ = roc_curve(labels, np.r_[member_scores, nonmember_scores])
    return float(true_rates[false_rates <= fpr].max())


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(member score > non-member score), ties counting one half."""
    return float(set_auc(member_scores, nonmember_scores))


def discrimination(features: np.ndarray, is_member: np.ndarray, feature_set: str, columns: list[str], seed: int = 0,
                   resamples: int = 1000) -> FeatureSetDiscrimination:
    """Cross-fitted (5-fold) scoring-model scores of the feature set ``feature_set`` (the (n, k) ``features``,
    named ``columns``), then AUC and TPR at 1% FPR.

    Intervals are percentile bootstraps resampling members and non-members
    independently (they ignore the dependence cross-fitting creates).
    """
    scores = cross_fitted_scores(features, is_member, seed)
    members, nonmembers = scores[is_member], scores[~is_member]

    def interval(statistic) -> tuple[float, float]:
        result = stats.bootstrap((members, nonmembers), statistic, n_resamples=resamples, method="percentile",
                                 vectorized=False, rng=np.random.default_rng(seed))
        return float(result.confidence_interval.low), float(result.confidence_interval.high)

    return FeatureSetDiscrimination(feature_set=feature_set, columns=columns, auc=auc(members, nonmembers),
                                    auc_ci=interval(auc), tpr_at_1pct_fpr=tpr_at_fpr(members, nonmembers),
                                    tpr_at_1pct_fpr_ci=interval(tpr_at_fpr))


@dataclass(frozen=True)
class Draw:
    """One simulated audit: which rows play P and U, and the seed its test uses."""

    kind: CurveKind
    n: int
    repeat: int
    suspect_rows: np.ndarray
    reference_rows: np.ndarray
    test_seed: int


def draws(kind: CurveKind, sizes: Sequence[int], repeats: int, member_rows: np.ndarray,
          nonmember_rows: np.ndarray, seed: int) -> Iterator[Draw]:
    """Random P and U of each size: members vs non-members, or (null) two disjoint sets of non-members.

    Each draw is a pure function of (seed, kind, n, repeat), so every feature
    set and test sees the same images (a paired comparison).
    """
    for n in sizes:
        for repeat in range(repeats):
            rng = np.random.default_rng([seed, 0 if kind == "members" else 1, n, repeat])
            if kind == "members":
                suspect = rng.choice(member_rows, n, replace=False)
                reference = rng.choice(nonmember_rows, n, replace=False)
            else:
                chosen = rng.choice(nonmember_rows, 2 * n, replace=False)
                suspect, reference = chosen[:n], chosen[n:]
            yield Draw(kind, n, repeat, suspect, reference, int(rng.integers(2**31 - 1)))


def draw_p_values(matrix: np.ndarray, draw: Draw, feature_sets: dict[str, list[int]],
                  tests: Sequence[AnyTestName], permutations: int) -> dict[tuple[str, str], float]:
    """p-value of every (feature set, test) on one draw; ``feature_sets`` maps names to column indices."""
    rows = np.r_[draw.suspect_rows, draw.reference_rows]
    is_suspect = np.r_[np.ones(draw.n, bool), np.zeros(draw.n, bool)]
    return {
        (name, test): run_test(test, matrix[np.ix_(rows, columns)], is_suspect, draw.test_seed,
                               permutations).p_value
        for name, columns in feature_sets.items()
        for test in tests
    }


def curve_points(results: list[tuple[Draw, dict[tuple[str, str], float]]], alpha: float
                 ) -> list[CurvePointResult]:
    """Median p and rejection rate per (feature set, test, kind, n), over the repeats."""
    grouped: dict[tuple[str, str, CurveKind, int], list[float]] = {}
    for draw, p_values in results:
        for (name, test), p in p_values.items():
            grouped.setdefault((name, test, draw.kind, draw.n), []).append(p)
    return [
        CurvePointResult(feature_set=name, test=test, kind=kind, n=n, median_p=float(np.median(values)),
                         fraction_below_alpha=float(np.mean(np.array(values) < alpha)), p_values=values)
        for (name, test, kind, n), values in grouped.items()
    ]


def images_needed(points: list[CurvePointResult], feature_set: str, test: str) -> int | None:
    """The smallest n whose median p on the members curve is below 0.01; None if no n on the grid reached it."""
    reached = [p.n for p in points if (p.feature_set, p.test, p.kind) == (feature_set, test, "members")
               and p.median_p < NEEDED_P]
    return min(reached, default=None)


def false_positives(points: list[CurvePointResult], feature_set: str, test: str, alpha: float
                    ) -> FalsePositiveRateResult:
    """Rejections at alpha over every null draw of one (feature set, test): ``binomial_p_value`` is the chance
    of at least this many if the true rate were alpha. Draws at different n reuse the same non-members, so
    this is a guide, not exact."""
    values = [p for point in points if (point.feature_set, point.test, point.kind) == (feature_set, test, "null")
              for p in point.p_values]
    rejections = int(np.sum(np.array(values) < alpha))
    runs = len(values)
    tail = stats.binomtest(rejections, runs, alpha, alternative="greater").pvalue if runs else math.nan
    return FalsePositiveRateResult(feature_set=feature_set, test=test, runs=runs, rejections=rejections,
                                   rate=rejections / runs if runs else math.nan, binomial_p_value=float(tail))
