"""SIDE end to end: generate a pool, cluster it, train the surrogate classifier, generate towards each
cohesive cluster, and find each owner image's nearest generation (SIDE; docs/extract-evidence.md).

Every generation is stored in the feature cache under the model's fingerprint and the settings that
shape it, so a later search of the same model with other owner images generates nothing again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cdi_audit.cache import FeatureStore, default_cache_dir
from cdi_audit.console import StageProgress
from cdi_audit.errors import AccessInsufficient, SettingsProblem
from cdi_audit.evidence.classifier import DEFAULT_TRAINING_STEPS, towards, train_surrogate
from cdi_audit.evidence.clusters import DEFAULT_COHESION, DEFAULT_MAX_CLUSTERS, PoolClusters, cluster_pool
from cdi_audit.evidence.embedding import DEFAULT_SIZE, embed_images
from cdi_audit.evidence.matching import NearestGenerations, ShareComparison, compare_match_shares, nearest_generations
from cdi_audit.evidence.pool import generate, to_images
from cdi_audit.evidence.sampling import DEFAULT_STEPS
from cdi_audit.inputs.images import ImageSet, load_model_pixels, scan_image_set
from cdi_audit.models.spec import Machine, ModelSpec
from cdi_audit.models.target import Target
from cdi_audit.pipeline.result import public_configuration
from cdi_audit.results.schema import ModelInfo

DEFAULT_BUDGET = 1024
DEFAULT_GUIDANCE_SCALE = 10.0
# Cosine of the 16 x 16 embeddings at or above which a generation counts as a near-copy (calibrated on the
# sample model: see the README section on extraction evidence).
DEFAULT_THRESHOLD = 0.85


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    model: ModelSpec
    suspect_dir: Path
    reference_dir: Path | None = None
    budget: int = DEFAULT_BUDGET  # generations in all: half the pool, half guided
    seed: int = 0
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    classifier_steps: int = DEFAULT_TRAINING_STEPS
    max_clusters: int = DEFAULT_MAX_CLUSTERS
    cohesion: float = DEFAULT_COHESION
    threshold: float = DEFAULT_THRESHOLD
    machine: Machine = Machine()
    batch_size: int = 64
    cache_dir: Path | None = None
    use_cache: bool = True
    strict: bool = False

    @property
    def pool_size(self) -> int:
        return max(4, self.budget // 2)


@dataclass(frozen=True)
class OwnerMatch:
    path: str
    sha256: str
    role: str  # "suspect" or "reference"
    generation: int  # index into the generations (pool first, then guided)
    similarity: float
    top_mean: float


@dataclass
class SearchResult:
    model: ModelInfo
    settings: dict
    pool_size: int
    guided_size: int
    clusters: int
    kept_clusters: int
    matches: list[OwnerMatch]
    share: ShareComparison | None  # None without reference images
    model_calls: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    generations: torch.Tensor | None = None  # images in [-1, 1], for the gallery (not in JSON)

    def suspect_matches(self) -> list[OwnerMatch]:
        return [m for m in self.matches if m.role == "suspect"]


def _refuse_unsupported(target: Target) -> None:
    if target.conditioning != "none":
        raise AccessInsufficient(
            f"SIDE steers an unconditional model with a surrogate condition, and this model is "
            f"{target.conditioning}-conditional ({target.description.family}); search it for near-copies by "
            "prompting it with your captions or class ids instead.")


def _pool_key(settings: SearchSettings) -> dict:
    """The settings the guided generations depend on besides model, seed and steps."""
    return {"pool_size": settings.pool_size, "max_clusters": settings.max_clusters, "cohesion": settings.cohesion,
            "classifier_steps": settings.classifier_steps, "scale": settings.guidance_scale,
            "embedding": DEFAULT_SIZE}


def relabel_to_kept(embeddings: torch.Tensor, clusters: PoolClusters) -> torch.Tensor:
    """Every pool image's nearest kept centroid, as 0..len(kept)-1 (SIDE trains on the whole pool this way)."""
    centroids = torch.from_numpy(clusters.centroids[list(clusters.kept)]).float()
    return (embeddings.float() @ centroids.T).argmax(dim=1)


def guided_generations(target: Target, settings: SearchSettings, pool_latents: torch.Tensor,
                       pool_embeddings: torch.Tensor, clusters: PoolClusters, store: FeatureStore | None,
                       progress: StageProgress) -> torch.Tensor:
    """The rest of the budget, spread evenly over the kept clusters, each steered towards its cluster."""
    labels = relabel_to_kept(pool_embeddings, clusters)
    classifier = train_surrogate(target, pool_latents, labels, len(clusters.kept), settings.seed,
                                 settings.classifier_steps)
    remaining = settings.budget - settings.pool_size
    per_cluster = max(1, remaining // len(clusters.kept))
    counter = progress.counter("generating towards clusters (clusters)")
    parts = []
    for rank in range(len(clusters.kept)):
        counter(rank, len(clusters.kept))
        parts.append(generate(target, f"guided-{rank}", per_cluster, settings.seed, settings.steps,
                              settings.batch_size, store, _pool_key(settings), towards(classifier, rank),
                              settings.guidance_scale))
    counter(len(clusters.kept), len(clusters.kept))
    return torch.cat(parts)


def _owner_embeddings(images: ImageSet, size: int) -> torch.Tensor:
    return embed_images(torch.from_numpy(load_model_pixels(images.records, size)))


def run_search(settings: SearchSettings, progress: StageProgress | None = None) -> SearchResult:
    if settings.budget < 8:
        raise SettingsProblem("--budget must be at least 8 generations (half of them form the pool).")
    progress = progress or StageProgress()
    started = time.perf_counter()
    target = settings.model.load(settings.machine)
    _refuse_unsupported(target)
    rows_before = target.forward_rows
    suspect = scan_image_set(settings.suspect_dir, settings.strict, progress.track("hashing suspect images"))
    reference = (scan_image_set(settings.reference_dir, settings.strict, progress.track("hashing reference images"))
                 if settings.reference_dir is not None else None)
    store_root = (settings.cache_dir or default_cache_dir()) if settings.use_cache else None
    store = FeatureStore(store_root) if store_root is not None else None

    pool_latents = generate(target, "pool", settings.pool_size, settings.seed, settings.steps, settings.batch_size,
                            store, on_done=progress.counter("generating the pool (images)"))
    pool_images = to_images(target, pool_latents, settings.batch_size)
    pool_embeddings = embed_images(pool_images)
    clusters = cluster_pool(pool_embeddings, settings.seed, settings.max_clusters, settings.cohesion)
    notes = []
    if clusters.kept:
        guided_latents = guided_generations(target, settings, pool_latents, pool_embeddings, clusters, store,
                                            progress)
        guided_images = to_images(target, guided_latents, settings.batch_size)
    else:
        guided_images = pool_images[:0]
        notes.append(f"No cluster of the pool was cohesive (leave-one-out mean cosine >= {settings.cohesion}); "
                     "no guided generations were made.")
    generations = torch.cat([pool_images, guided_images])
    generation_embeddings = embed_images(generations)

    def matches_of(images: ImageSet, role: str) -> tuple[list[OwnerMatch], NearestGenerations]:
        nearest = nearest_generations(_owner_embeddings(images, target.sample_size), generation_embeddings)
        return [OwnerMatch(str(r.path), r.sha256, role, int(i), float(s), float(m))
                for r, i, s, m in zip(images.records, nearest.index, nearest.similarity, nearest.top_mean,
                                      strict=True)], nearest

    matches, suspect_nearest = matches_of(suspect, "suspect")
    share = None
    if reference is not None:
        reference_matches, reference_nearest = matches_of(reference, "reference")
        matches += reference_matches
        share = compare_match_shares(suspect_nearest.similarity, reference_nearest.similarity, settings.threshold)
    else:
        notes.append("No reference images: the share of suspect images with a near-copy cannot be compared with "
                     "what the model generates for images it never saw, so it is not evidence by itself.")
    return SearchResult(
        model=target.description, settings=public_configuration(settings), pool_size=len(pool_images),
        guided_size=len(guided_images), clusters=len(clusters.centroids), kept_clusters=len(clusters.kept),
        matches=matches, share=share, model_calls=target.forward_rows - rows_before,
        seconds=time.perf_counter() - started, notes=notes, generations=generations,
    )
