"""Which generation comes closest to each owner image, and whether the suspect images find near-copies
more often than the reference images.

The comparison is what makes a match count: a model may well generate something close to a flat sky or
a texture in anyone's collection. The generations never depend on which images are suspect and which are
reference, so under "the model treats both sets alike" each image's match indicator is exchangeable
between the sets, and Fisher's exact test of the two shares is exact (one-sided: suspect > reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cdi_audit.evidence.embedding import cosine_similarities

TOP_K = 5


@dataclass(frozen=True)
class NearestGenerations:
    index: np.ndarray  # (N,) the closest generation of each owner image
    similarity: np.ndarray  # (N,) its cosine
    top_mean: np.ndarray  # (N,) mean cosine of the TOP_K closest generations


def nearest_generations(owner: torch.Tensor, generations: torch.Tensor) -> NearestGenerations:
    similarities = cosine_similarities(owner.double(), generations.double())
    top = similarities.topk(min(TOP_K, similarities.shape[1]), dim=1).values
    best = similarities.max(dim=1)
    return NearestGenerations(best.indices.numpy(), best.values.numpy(), top.mean(dim=1).numpy())


@dataclass(frozen=True)
class ShareComparison:
    threshold: float
    suspect_matched: int
    suspect_total: int
    reference_matched: int
    reference_total: int
    odds_ratio: float
    p_value: float


def compare_match_shares(suspect: np.ndarray, reference: np.ndarray, threshold: float) -> ShareComparison:
    """Fisher's exact test (one-sided) of the share of suspect images with a match >= ``threshold`` against
    the same share among the reference images."""
    from scipy.stats import fisher_exact

    a, b = int((suspect >= threshold).sum()), int((reference >= threshold).sum())
    table = [[a, len(suspect) - a], [b, len(reference) - b]]
    odds_ratio, p_value = fisher_exact(table, alternative="greater")
    return ShareComparison(threshold, a, len(suspect), b, len(reference), float(odds_ratio), float(p_value))
