"""False-positive rate of the split test on black-box (ReDiffuse) features of never-trained images.

The 128 never-trained sample images (unpublished + other) are featurised once through the local
black-box back end (cached under /tmp/cdi-audit-blackbox-null); then 1,000 random n-vs-n audits per n
are drawn from all 128 and split-tested, next to the same test on Gaussian features. Two torch
threads, one process.

    python benchmarks/blackbox_split_null.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cdi_audit.blackbox.variation import local_black_box
from cdi_audit.cache import FeatureStore
from cdi_audit.features.rediffuse import ReDiffuse
from cdi_audit.inputs.images import scan_image_set
from cdi_audit.models.loading import load_target
from cdi_audit.pipeline.extraction import extract_features
from cdi_audit.statistics.testing import split_test

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
DRAWS = 1000


def rejection_rates(features: np.ndarray, n: int, rng: np.random.Generator) -> tuple[float, float]:
    """Shares of DRAWS split tests of n vs n rows (drawn without replacement) with p < 0.05 and p < 0.01."""
    labels = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    p_values = np.array([split_test(features[rng.permutation(len(features))[: 2 * n]], labels, seed=draw).p_value
                         for draw in range(DRAWS)])
    return float((p_values < 0.05).mean()), float((p_values < 0.01).mean())


def main() -> None:
    torch.set_num_threads(2)
    records = [r for folder in ("unpublished", "other") for r in scan_image_set(SAMPLE / folder).records]
    target = local_black_box(load_target(SAMPLE / "model", torch.device("cpu")))
    store = FeatureStore(Path("/tmp/cdi-audit-blackbox-null"))
    table, _ = extract_features(records, target, [ReDiffuse()], 0, 32, store)
    features = table.scoring_matrix(table.keys)
    rng = np.random.default_rng(1)
    for n in (10, 20, 30, 50):
        print(f"rediffuse n={n}: rejected at 0.05 / 0.01: %.3f / %.3f" % rejection_rates(features, n, rng))
    gaussian = rng.normal(size=(len(features), features.shape[1]))
    for n in (10, 30):
        print(f"gaussian  n={n}: rejected at 0.05 / 0.01: %.3f / %.3f" % rejection_rates(gaussian, n, rng))


if __name__ == "__main__":
    main()
