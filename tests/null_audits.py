"""Null audits drawn from the feature rows of images no model saw: the false-positive check every new
feature column and family gets."""

from __future__ import annotations

import numpy as np

from cdi_audit.statistics.testing import permutation_test


def null_rejections(matrix: np.ndarray, stream: int, draws: int = 200, per_set: int = 20, permutations: int = 100,
                    alpha: float = 0.05) -> int:
    """How many of ``draws`` audits of ``per_set`` rows against ``per_set`` others, drawn at random from the
    scoring ``matrix`` (random stream ``stream``), the permutation test rejects at ``alpha``."""
    is_suspect = np.r_[np.ones(per_set, bool), np.zeros(per_set, bool)]
    rejections = 0
    for draw in range(draws):
        order = np.random.default_rng([stream, draw]).permutation(len(matrix))[: 2 * per_set]
        rejections += permutation_test(matrix[order], is_suspect, permutations, seed=draw).p_value < alpha
    return rejections
