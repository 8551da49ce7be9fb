"""Checks that keep a verdict honest (protocol.md, Controls): input overlap and near-duplicates, the
model-free distribution-shift check, and the negative control."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from cdi_audit.errors import InputProblem
from cdi_audit.image_statistics import STATISTIC_NAMES, ImageDescription, describe_image
from cdi_audit.images import ImageRecord, ImageSet
from cdi_audit.stats import TestName, TestOutcome, auc, permutation_test, run_test

# Two files show the same picture when their pHashes differ in at most NEAR_DUPLICATE_BITS of 64 bits, or
# their 8x8 layouts correlate at NEAR_DUPLICATE_CORRELATION or more. On the 192 sample crops (all cut from the
# same photographs), 766 of 768 re-encoded or resized copies (WebP 70 at 64 px, JPEG 75, WebP 60 at 24 px,
# JPEG 50 at 72 px) were caught, and none of the 18,336 pairs of distinct crops was flagged (they differed in
# at least 10 bits and correlated at most 0.913). Nearly flat pictures (almost no grey-level contrast) are
# the blind spot: compression noise then dominates both measures.
NEAR_DUPLICATE_BITS = 8
NEAR_DUPLICATE_CORRELATION = 0.95
DEFAULT_SHIFT_ALPHA = 0.05


def reject_overlap(
    first: ImageSet,
    second: ImageSet,
    requirement: str = "the reference set must hold only unpublished images",
) -> None:
    """The same file in both sets makes the comparison meaningless: an input error, not a finding."""
    second_paths = {record.sha256: record.path for record in second.records}
    shared = [(record.path, second_paths[record.sha256]) for record in first.records
              if record.sha256 in second_paths]
    if shared:
        first_path, second_path = shared[0]
        raise InputProblem(
            f"{len(shared)} file(s) are in both {first.root} and {second.root} "
            f"(e.g. {first_path} = {second_path}); {requirement}."
        )


def negative_control(
    reference_features: np.ndarray,
    test: TestName,
    seed: int,
    permutations: int,
    n_jobs: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> TestOutcome:
    """The full test on two random halves of the reference set, the first half playing P.

    Both halves are unseen by the model, so this is null by construction: a
    significant result points at a bug or an ordering artefact, and the audit
    is then inconclusive rather than trusted.
    """
    n = len(reference_features)
    first_half = np.zeros(n, dtype=bool)
    first_half[np.random.default_rng([seed, 104729]).permutation(n)[: n // 2]] = True
    return run_test(test, reference_features, first_half, seed, permutations, n_jobs, on_progress)


@dataclass(frozen=True)
class DescribedImage:
    """An input image with its model-free statistics and perceptual hash."""

    record: ImageRecord
    role: str
    description: ImageDescription


def describe_images(images: ImageSet, role: str,
                    track: Callable[[list[ImageRecord]], Iterable[ImageRecord]] = iter) -> list[DescribedImage]:
    return [DescribedImage(record, role, describe_image(record.path)) for record in track(images.records)]


@dataclass(frozen=True)
class NearDuplicate:
    """Two files that show the same picture: pHash ``distance`` in bits, and layout ``correlation``."""

    first: DescribedImage
    second: DescribedImage
    distance: int
    correlation: float


def _hash_array(images: list[DescribedImage]) -> np.ndarray:
    return np.array([image.description.perceptual_hash for image in images], dtype=np.uint64)


def near_duplicates(first: list[DescribedImage], second: list[DescribedImage] | None = None) -> list[NearDuplicate]:
    """Pairs within ``first`` (when ``second`` is None) or across ``first`` and ``second``."""
    within = second is None
    second = first if within else second
    if not first or not second:
        return []
    second_hashes = _hash_array(second)
    second_layouts = np.stack([image.description.layout for image in second])
    pairs = []
    for index, image in enumerate(first):
        differing = np.bitwise_xor(second_hashes, np.uint64(image.description.perceptual_hash))
        distances = np.unpackbits(differing.view(np.uint8)).reshape(len(second), 64).sum(axis=1)
        correlations = second_layouts @ image.description.layout
        close = (distances <= NEAR_DUPLICATE_BITS) | (correlations >= NEAR_DUPLICATE_CORRELATION)
        for other in np.flatnonzero(close):
            if not within or other > index:
                pairs.append(NearDuplicate(image, second[int(other)], int(distances[other]),
                                           float(correlations[other])))
    return pairs


@dataclass(frozen=True)
class ShiftedStatistic:
    """One image statistic: AUC of suspect over reference (0.5 = no difference) and each set's mean."""

    name: str
    auc: float
    suspect_mean: float
    reference_mean: float


@dataclass(frozen=True)
class ShiftCheck:
    """The audit's own test run on model-free image statistics: can the sets be told apart without the model?"""

    p_value: float
    alpha: float
    most_different: tuple[ShiftedStatistic, ...]

    @property
    def passed(self) -> bool:
        return self.p_value >= self.alpha


def shift_check(suspect: list[DescribedImage], reference: list[DescribedImage], alpha: float, seed: int,
                permutations: int, n_jobs: int = 1, on_progress: Callable[[int, int], None] | None = None,
                shown: int = 5) -> ShiftCheck:
    """The permutation test of the audit (cross-fitted logistic regression, Welch statistic), on image
    statistics instead of model features; statistics constant across both sets are left out."""
    matrix = np.stack([image.description.statistics for image in suspect + reference])
    is_suspect = np.r_[np.ones(len(suspect), bool), np.zeros(len(reference), bool)]
    varying = np.ptp(matrix, axis=0) > 0
    if not varying.any():
        return ShiftCheck(1.0, alpha, ())
    matrix = matrix[:, varying]
    names = [name for name, keep in zip(STATISTIC_NAMES, varying, strict=True) if keep]
    outcome = permutation_test(matrix, is_suspect, permutations, seed=seed, n_jobs=n_jobs, on_progress=on_progress)
    aucs = auc(matrix[is_suspect], matrix[~is_suspect], axis=0)
    order = np.argsort(-np.abs(aucs - 0.5), kind="stable")[:shown]
    return ShiftCheck(outcome.p_value, alpha, tuple(
        ShiftedStatistic(names[i], float(aucs[i]), float(matrix[is_suspect, i].mean()),
                         float(matrix[~is_suspect, i].mean())) for i in order))


@dataclass(frozen=True)
class ScreenedSets:
    """The sets after the near-duplicate screen, with every image described once."""

    suspect: ImageSet
    reference: ImageSet
    suspect_described: list[DescribedImage]
    reference_described: list[DescribedImage]
    removed_from_reference: list[NearDuplicate]  # (suspect image, its copy in the reference set)
    within_sets: list[NearDuplicate]


def screen_near_duplicates(suspect: ImageSet, reference: ImageSet,
                           track: Callable[[list[ImageRecord]], Iterable[ImageRecord]] = iter) -> ScreenedSets:
    """Describe every image; drop reference images that are near-duplicates of a suspect image (a copy of a
    published picture is not an unpublished one), and list near-duplicates within each set."""
    suspect_described = describe_images(suspect, "suspect", track)
    reference_described = describe_images(reference, "reference", track)
    first_pair_of_copy: dict[str, NearDuplicate] = {}
    for pair in near_duplicates(suspect_described, reference_described):
        first_pair_of_copy.setdefault(pair.second.record.sha256, pair)
    kept = [image for image in reference_described if image.record.sha256 not in first_pair_of_copy]
    return ScreenedSets(
        suspect,
        ImageSet(reference.root, [image.record for image in kept], reference.skipped),
        suspect_described,
        kept,
        list(first_pair_of_copy.values()),
        near_duplicates(suspect_described) + near_duplicates(kept),
    )
