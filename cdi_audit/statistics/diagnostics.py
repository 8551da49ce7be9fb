"""Per-feature diagnostics for the report: what each column does on its own, and how the scoring
model weighs it. Diagnostic, not evidence: the p-value comes from the test on the combined score.
"""

from __future__ import annotations

import numpy as np

from cdi_audit.results.schema import FeatureDiagnosticRow
from cdi_audit.statistics.testing import auc, scoring_model


def feature_diagnostics(features: np.ndarray, is_suspect: np.ndarray, columns: tuple[str, ...] | list[str],
                        seed: int) -> list[FeatureDiagnosticRow]:
    """One diagnostic per column of the (n, k) scoring matrix ``features``."""
    single_aucs = auc(features[is_suspect], features[~is_suspect], axis=0)
    weights = scoring_model(seed).fit(features, is_suspect)[-1].coef_[0]
    return [FeatureDiagnosticRow(name=name, auc=float(value), weight=float(weight))
            for name, value, weight in zip(columns, single_aucs, weights, strict=True)]
