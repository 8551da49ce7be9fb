"""Comparing features that were computed in different batch compositions, shards or processes.

Float32 kernels (oneDNN on the CPU, cuDNN on a GPU) choose how to sum by the shape of a call, and that choice
differs between CPUs: the same image in another batch moves its features by float rounding (measured up to
4.8e-7 absolute, 8.7e-7 relative, on a 2-core AMD EPYC). Such features are equal to a stated float32
tolerance, and the audit they give has the same verdict and p-value; bit-equality is asserted only where the
same computation runs twice.
"""

from __future__ import annotations

import numpy as np

from cdi_audit.features.table import FeatureTable
from cdi_audit.verdict.decision import decide

FLOAT32_RTOL = 1e-5
FLOAT32_ATOL = 1e-6
# A neighbour-loss column is the difference of two losses of about 10-30 on the tiny models: it keeps their
# absolute float32 rounding, not a relative one (measured up to 1.7e-6 on values of 0.02).
NEIGHBOUR_ATOL = 2e-5


def assert_features_close(actual: np.ndarray, desired: np.ndarray, columns: tuple[str, ...],
                          rtol: float = FLOAT32_RTOL, atol: float = FLOAT32_ATOL) -> None:
    """Feature values from two batch compositions agree to float32 rounding, the neighbour columns to
    ``NEIGHBOUR_ATOL`` absolute."""
    neighbour = np.array([column.startswith("neighbour_") for column in columns], dtype=bool)
    np.testing.assert_allclose(actual[:, ~neighbour], desired[:, ~neighbour], rtol=rtol, atol=atol)
    np.testing.assert_allclose(actual[:, neighbour], desired[:, neighbour], rtol=rtol, atol=max(atol, NEIGHBOUR_ATOL))


def assert_same_audit(first: FeatureTable, second: FeatureTable, suspect_keys: list[str],
                      reference_keys: list[str]) -> None:
    """The tables hold the same rows and columns, their values agree to float32 rounding, and the audit's
    test gives the same verdict and p-value on both."""
    assert first.keys == second.keys and first.columns == second.columns
    assert_features_close(first.values, second.values, first.columns)
    verdicts = [decide(table, suspect_keys, reference_keys, alpha=0.01, test="permutation", seed=0,
                       permutations=200, curve_resamples=0)
                for table in (first, second)]
    assert verdicts[0].verdict == verdicts[1].verdict
    assert verdicts[0].outcome.p_value == verdicts[1].outcome.p_value
