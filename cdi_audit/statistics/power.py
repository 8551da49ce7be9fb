"""How the p-value depends on the number of images: the sample-size curve of one audit, and the number
of images per set that 80% power needs.

For each n on a grid up to min(n_P, n_U), ``resamples`` random audits of n
suspect against n reference images (drawn without replacement from the
audit's own rows) are tested with the split test, which is cheap and valid,
and the median p-value is reported. The curve shows whether a result rests on
a margin (p barely below alpha only at full size) or on a clear trend, and how
many images a repeat audit would need. It is descriptive: the audit's verdict
is the full test on all images, never a point of this curve. At n close to the
set sizes the resamples share most images, so their spread understates the
variation between independent audits.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from cdi_audit.results.schema import SampleSizeCurvePoint
from cdi_audit.statistics.evaluation import draws, sample_size_grid
from cdi_audit.statistics.testing import split_tests

CURVE_TEST = "split"
DEFAULT_CURVE_RESAMPLES = 100


def sample_size_curve(features: np.ndarray, is_suspect: np.ndarray, alpha: float, seed: int,
                      resamples: int = DEFAULT_CURVE_RESAMPLES) -> list[SampleSizeCurvePoint]:
    """The curve over ``sample_size_grid(min(n_P, n_U))``; ``features`` is the (n, k) scoring matrix.

    The resampled audits are split tests; each size's are solved as one stack.
    """
    suspect_rows, reference_rows = np.flatnonzero(is_suspect), np.flatnonzero(~is_suspect)
    sizes = sample_size_grid(min(len(suspect_rows), len(reference_rows)))
    points = []
    for n in sizes:
        resampled = list(draws("members", [n], resamples, suspect_rows, reference_rows, seed))
        outcomes = split_tests(features, is_suspect, [np.r_[draw.suspect_rows, draw.reference_rows]
                                                      for draw in resampled], [draw.test_seed for draw in resampled])
        p_values = np.array([outcome.p_value for outcome in outcomes])
        points.append(SampleSizeCurvePoint(n=n, median_p=float(np.median(p_values)),
                                           fraction_below_alpha=float(np.mean(p_values < alpha)),
                                           resamples=len(p_values)))
    return points


POWER_TARGET = 0.8
LARGEST_SET = 1_000_000


def t_test_power(cohens_d: float, n: int, alpha: float) -> float:
    """Power of a one-sided two-sample t-test with n images per set against a standardised difference d
    (noncentral t; equal variances)."""
    df = 2 * n - 2
    critical = stats.t.ppf(1 - alpha, df)
    return float(stats.nct.sf(critical, df, cohens_d * math.sqrt(n / 2)))


def images_for_power(cohens_d: float, alpha: float, power: float = POWER_TARGET) -> int | None:
    """The smallest n per set at which ``t_test_power`` reaches ``power``; None when d <= 0 (nothing to
    detect) or when even ``LARGEST_SET`` images would not do."""
    if not cohens_d > 0 or t_test_power(cohens_d, LARGEST_SET, alpha) < power:
        return None
    low, high = 2, LARGEST_SET  # power(high) >= target; find the first n that reaches it
    while low < high:
        middle = (low + high) // 2
        if t_test_power(cohens_d, middle, alpha) >= power:
            high = middle
        else:
            low = middle + 1
    return low


def curve_images_for_power(points: list[SampleSizeCurvePoint], power: float = POWER_TARGET) -> int | None:
    """The smallest n on the curve at which at least ``power`` of the resampled audits had p < alpha."""
    return min((point.n for point in points if point.fraction_below_alpha >= power), default=None)
