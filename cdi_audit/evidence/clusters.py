"""Clusters of the generation pool: the surrogate conditions SIDE steers generation towards.

A memorising model generates some training images again and again, with small variations; those
generations form tight clusters in embedding space. k-means finds them, and only cohesive clusters
(mean cosine of members to their centroid at least ``cohesion``) are kept: a loose cluster mixes
unrelated pictures, and steering towards it would not concentrate on any one image.

Departure from SIDE (docs/extract-evidence.md): each member is compared with the centroid of the *other* members
(leave-one-out). The plain mean cosine to a centroid that includes the member rewards small clusters by
chance: two unrelated images always score about 0.71, four about 0.5, so with up to 100 clusters on a
pool of a few hundred generations many clusters of noise would pass 0.5. Left out, unrelated images
score about 0 whatever the cluster size, and tight clusters score as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_MAX_CLUSTERS = 100
DEFAULT_COHESION = 0.5
MIN_CLUSTER_SIZE = 2


@dataclass(frozen=True)
class PoolClusters:
    labels: np.ndarray  # (N,) cluster of each pool image
    centroids: np.ndarray  # (K, D) unit vectors
    cohesion: np.ndarray  # (K,) mean cosine of members to their centroid
    sizes: np.ndarray  # (K,)
    kept: tuple[int, ...]  # cohesive clusters of at least MIN_CLUSTER_SIZE images, most cohesive first


def cluster_pool(embeddings: torch.Tensor, seed: int, max_clusters: int = DEFAULT_MAX_CLUSTERS,
                 cohesion: float = DEFAULT_COHESION) -> PoolClusters:
    """k-means (k-means++ start, 4 restarts) with K = min(max_clusters, N // 4) on unit embeddings."""
    from sklearn.cluster import KMeans

    data = embeddings.double().numpy()
    count = max(1, min(max_clusters, len(data) // 4))
    labels = KMeans(n_clusters=count, n_init=4, random_state=seed).fit_predict(data)
    centroids, scores, sizes = [], [], []
    for cluster in range(count):
        members = data[labels == cluster]
        total = members.sum(axis=0)
        centroids.append(total / max(np.linalg.norm(total), 1e-12))
        scores.append(leave_one_out_cohesion(members))
        sizes.append(len(members))
    scores_array, sizes_array = np.array(scores), np.array(sizes)
    kept = tuple(int(c) for c in np.argsort(-scores_array, kind="stable")
                 if scores_array[c] >= cohesion and sizes_array[c] >= MIN_CLUSTER_SIZE)
    return PoolClusters(labels, np.array(centroids), scores_array, sizes_array, kept)


def leave_one_out_cohesion(members: np.ndarray) -> float:
    """Mean cosine of each member to the normalised sum of the other members; 0 for fewer than two."""
    if len(members) < 2:
        return 0.0
    others = members.sum(axis=0)[None, :] - members
    norms = np.maximum(np.linalg.norm(others, axis=1), 1e-12)
    return float(((members * others).sum(axis=1) / norms).mean())
