"""Per-feature diagnostics for the report: what each column does on its own, and how the scoring
model weighs it. Diagnostic, not evidence: the p-value comes from the test on the combined score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cdi_audit.statistics.testing import auc, scoring_model


@dataclass(frozen=True)
class FeatureDiagnostic:
    """``auc``: P(a suspect image's value > a reference image's), 0.5 = no separation, below 0.5 =
    lower in the suspect set (expected for losses). ``weight``: the scoring model's coefficient on the
    standardised column when fitted on all images (positive pushes towards "suspect")."""

    name: str
    auc: float
    weight: float


def feature_diagnostics(features: np.ndarray, is_suspect: np.ndarray, columns: tuple[str, ...] | list[str],
                        seed: int) -> list[FeatureDiagnostic]:
    """One diagnostic per column of the (n, k) scoring matrix ``features``."""
    single_aucs = auc(features[is_suspect], features[~is_suspect], axis=0)
    weights = scoring_model(seed).fit(features, is_suspect)[-1].coef_[0]
    return [FeatureDiagnostic(name, float(value), float(weight))
            for name, value, weight in zip(columns, single_aucs, weights, strict=True)]
