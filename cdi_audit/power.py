"""How the p-value depends on the number of images: the sample-size curve of one audit.

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

from dataclasses import dataclass

import numpy as np

from cdi_audit.evaluation import curve_points, draw_p_values, draws, sample_size_grid

CURVE_TEST = "split"
DEFAULT_CURVE_RESAMPLES = 100


@dataclass(frozen=True)
class SampleSizePoint:
    """Split-test p-values of ``resamples`` audits of n vs n images: their median, and the share below alpha."""

    n: int
    median_p: float
    fraction_below_alpha: float
    resamples: int


def sample_size_curve(features: np.ndarray, is_suspect: np.ndarray, alpha: float, seed: int,
                      resamples: int = DEFAULT_CURVE_RESAMPLES) -> list[SampleSizePoint]:
    """The curve over ``sample_size_grid(min(n_P, n_U))``; ``features`` is the (n, k) scoring matrix."""
    suspect_rows, reference_rows = np.flatnonzero(is_suspect), np.flatnonzero(~is_suspect)
    sizes = sample_size_grid(min(len(suspect_rows), len(reference_rows)))
    all_columns = {"audit": list(range(features.shape[1]))}
    results = [(draw, draw_p_values(features, draw, all_columns, (CURVE_TEST,), permutations=0))
               for draw in draws("members", sizes, resamples, suspect_rows, reference_rows, seed)]
    return sorted((SampleSizePoint(point.n, point.median_p, point.fraction_below_alpha, len(point.p_values))
                   for point in curve_points(results, alpha)), key=lambda point: point.n)
