"""Which images are the units of the test (docs/inputs.md, "Near-duplicates"): overlap between the sets, near-duplicates
across them, and groups of near-duplicates within each.

The permutation test and the cross-fitting folds treat every image as an exchangeable unit. Two files of one
picture (a web version and its re-encode, a resize, a light crop) are not: their features nearly coincide, so
a copy in the training folds scores its original out of fold, and permuting images breaks the pair apart.
Measured on a small DDPM that saw none of the images (40 never-trained images plus a JPEG re-encode of each
against 80 others), the test rejected at p < 0.01 in 21% of draws. So each group of near-duplicates within a
set becomes one unit: the audit keeps one image of it (the one with the most pixels, then the largest file,
then the first by path) and lists the others as left out. A reference image that shows a suspect picture is
no unpublished image at all and is removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cdi_audit.errors import InputProblem
from cdi_audit.inputs.image_statistics import STATISTIC_NAMES, ImageDescription, describe_image, framing_views
from cdi_audit.inputs.images import ImageRecord, ImageSet

# Two files show the same picture when their pHashes differ in at most NEAR_DUPLICATE_BITS of 64 bits, or
# their 8x8 layouts correlate at NEAR_DUPLICATE_CORRELATION or more. On the 192 sample crops (all cut from the
# same photographs), 766 of 768 re-encoded or resized copies (WebP 70 at 64 px, JPEG 75, WebP 60 at 24 px,
# JPEG 50 at 72 px) were caught, and none of the 18,336 pairs of distinct crops was flagged (they differed in
# at least 10 bits and correlated at most 0.913). Nearly flat pictures (almost no grey-level contrast) are
# the blind spot: compression noise then dominates both measures.
NEAR_DUPLICATE_BITS = 8
NEAR_DUPLICATE_CORRELATION = 0.95
# A light crop moves both measures (a 2-pixel border trimmed off a 32 px picture is caught by them in 1 of 3
# cases): so one picture is also a near-duplicate of another when one of its 81 framings (0, 5 or 10% trimmed
# off each side) correlates with the other's whole layout at FRAMING_CORRELATION or more. On 160 planted copies
# of 32 px crops (tests/test_duplicate_groups.py: JPEG 92, resizes to 24 and 44 px, 1-3 px trimmed off one to
# four sides) all 160 are found, and with the measures above 2 of the 12,720 pairs of distinct crops are flagged
# (crops of one photograph that overlap), and no pair of the sample's published and unpublished sets.
FRAMING_CORRELATION = 0.97
# Grey layouts are blind to colour: a red circle on yellow and a blue circle on red match a framing of each
# other. So a framing match also needs every channel's mean (on [0, 1]) within FRAMING_COLOUR_DIFFERENCE: the
# 160 planted copies differ by at most 0.045 (trims; re-encodes and resizes by 0.003), 22 of 23 pairs of
# different synthetic shapes that matched by layout differ by 0.099 to 0.83.
FRAMING_COLOUR_DIFFERENCE = 0.08
MEAN_COLOUR = [STATISTIC_NAMES.index(name) for name in ("mean_red", "mean_green", "mean_blue")]
ROWS_PER_CHUNK = 512


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


@dataclass(frozen=True)
class DescribedImage:
    """An input image with its model-free statistics and perceptual hash."""

    record: ImageRecord
    role: str
    description: ImageDescription

    @property
    def pixels(self) -> int:
        """Width times height of the file (the statistics hold their logarithms)."""
        statistics = self.description.statistics
        logs = statistics[STATISTIC_NAMES.index("log_width")] + statistics[STATISTIC_NAMES.index("log_height")]
        return round(float(np.exp(logs)))


def describe_images(images: ImageSet, role: str,
                    track: Callable[[list[ImageRecord]], Iterable[ImageRecord]] = iter) -> list[DescribedImage]:
    return [DescribedImage(record, role, describe_image(record.path)) for record in track(images.records)]


@dataclass(frozen=True)
class NearDuplicate:
    """Two files that show the same picture: pHash ``distance`` in bits, ``correlation`` of their layouts,
    and ``framed_correlation``, the best of one's framings against the other's whole layout."""

    first: DescribedImage
    second: DescribedImage
    distance: int
    correlation: float
    framed_correlation: float | None  # None: no framing reached FRAMING_CORRELATION


def _mean_colours(images: list[DescribedImage]) -> np.ndarray:
    return np.stack([image.description.statistics[MEAN_COLOUR] for image in images])


def _framed_matches(owners: list[DescribedImage], others: list[DescribedImage]) -> Iterator[tuple[int, int, float]]:
    """(owner index, other index, correlation) where a framing of the owner matches the other's whole layout
    and their colours agree."""
    whole = framing_views(np.stack([image.description.thumbnail for image in others]), whole_only=True)[:, 0]
    owner_colours, other_colours = _mean_colours(owners), _mean_colours(others)
    for start in range(0, len(owners), ROWS_PER_CHUNK):
        thumbnails = np.stack([image.description.thumbnail for image in owners[start:start + ROWS_PER_CHUNK]])
        views = framing_views(thumbnails)
        best = np.full((len(thumbnails), len(others)), -1.0, dtype=np.float32)
        for view in range(views.shape[1]):
            np.maximum(best, views[:, view] @ whole.T, out=best)
        for row, column in zip(*np.nonzero(best >= FRAMING_CORRELATION), strict=True):
            colour_difference = np.abs(owner_colours[start + row] - other_colours[column]).max()
            if colour_difference <= FRAMING_COLOUR_DIFFERENCE:
                yield start + int(row), int(column), float(best[row, column])


def _framed_correlations(first: list[DescribedImage], second: list[DescribedImage], within: bool
                         ) -> dict[int, dict[int, float]]:
    """first index -> {second index: best framing correlation} over the pairs that match in either direction
    (a framing of the first against the whole second, or the other way round); within one set, each pair
    once, under its smaller index."""
    found: dict[int, dict[int, float]] = {}

    def note(i: int, j: int, value: float) -> None:
        if within:
            if i == j:
                return  # every picture is a framing of itself
            i, j = min(i, j), max(i, j)
        found.setdefault(i, {})[j] = max(value, found.get(i, {}).get(j, -1.0))

    for i, j, value in _framed_matches(first, second):
        note(i, j, value)
    if not within:
        for j, i, value in _framed_matches(second, first):
            note(i, j, value)
    return found


def near_duplicates(first: list[DescribedImage], second: list[DescribedImage] | None = None) -> list[NearDuplicate]:
    """Pairs within ``first`` (when ``second`` is None) or across ``first`` and ``second``, in index order."""
    within = second is None
    second = first if within else second
    if not first or not second:
        return []
    framed = _framed_correlations(first, second, within)
    second_hashes = np.array([image.description.perceptual_hash for image in second], dtype=np.uint64)
    second_layouts = np.stack([image.description.layout for image in second])
    pairs = []
    for index, image in enumerate(first):
        differing = np.bitwise_xor(second_hashes, np.uint64(image.description.perceptual_hash))
        distances = np.unpackbits(differing.view(np.uint8)).reshape(len(second), 64).sum(axis=1)
        correlations = second_layouts @ image.description.layout
        close = (distances <= NEAR_DUPLICATE_BITS) | (correlations >= NEAR_DUPLICATE_CORRELATION)
        close[list(framed.get(index, {}))] = True
        for other in np.flatnonzero(close):
            if not within or other > index:
                pairs.append(NearDuplicate(image, second[int(other)], int(distances[other]),
                                           float(correlations[other]), framed.get(index, {}).get(int(other))))
    return pairs


@dataclass(frozen=True)
class DuplicateGroup:
    """Near-duplicates within one set: the image the audit keeps, and the ones it leaves out."""

    role: str
    kept: DescribedImage
    left_out: tuple[DescribedImage, ...]


def _keep_first(image: DescribedImage) -> tuple[int, int, str]:
    """Sort key: the image with the most pixels, then the largest file, then the first by path is kept
    (the best copy, where one is a re-encode, resize or crop of another)."""
    return (-image.pixels, -image.record.path.stat().st_size, str(image.record.path))


def duplicate_groups(images: list[DescribedImage], pairs: list[NearDuplicate]) -> list[DuplicateGroup]:
    """The connected groups of ``pairs`` (near-duplicates within ``images``), each with its kept image."""
    position = {id(image): index for index, image in enumerate(images)}
    edges = np.array([(position[id(pair.first)], position[id(pair.second)]) for pair in pairs], int).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(images), len(images)))
    _, component = connected_components(graph, directed=False)
    members: dict[int, list[DescribedImage]] = {}
    for image, label in zip(images, component, strict=True):
        members.setdefault(int(label), []).append(image)
    groups = []
    for group in members.values():
        if len(group) > 1:
            kept, *left_out = sorted(group, key=_keep_first)
            groups.append(DuplicateGroup(kept.role, kept, tuple(left_out)))
    return sorted(groups, key=lambda group: str(group.kept.record.path))


@dataclass(frozen=True)
class Screen:
    """What the screen keeps of two described sets: the units of the test."""

    suspect: list[DescribedImage]
    reference: list[DescribedImage]
    removed_from_reference: list[NearDuplicate]  # (suspect image, its copy in the reference set)
    within_sets: list[NearDuplicate]
    groups: list[DuplicateGroup]

    @property
    def left_out(self) -> list[DescribedImage]:
        return [image for group in self.groups for image in group.left_out]


def screen(suspect: list[DescribedImage], reference: list[DescribedImage]) -> Screen:
    """Drop reference images that are near-duplicates of a suspect image (a copy of a published picture is
    not an unpublished one); keep one image of each group of near-duplicates within a set."""
    first_pair_of_copy: dict[str, NearDuplicate] = {}
    for pair in near_duplicates(suspect, reference):
        first_pair_of_copy.setdefault(pair.second.record.sha256, pair)
    remaining = [image for image in reference if image.record.sha256 not in first_pair_of_copy]
    suspect_pairs, reference_pairs = near_duplicates(suspect), near_duplicates(remaining)
    groups = duplicate_groups(suspect, suspect_pairs) + duplicate_groups(remaining, reference_pairs)
    left_out = {id(image) for group in groups for image in group.left_out}
    return Screen([image for image in suspect if id(image) not in left_out],
                  [image for image in remaining if id(image) not in left_out],
                  list(first_pair_of_copy.values()), suspect_pairs + reference_pairs, groups)


@dataclass(frozen=True)
class ScreenedSets:
    """The image sets after the screen (their left-out images kept as ``excluded``, so that captions or labels
    naming them are still recognised), and the screen itself."""

    suspect: ImageSet
    reference: ImageSet
    screen: Screen


def screen_near_duplicates(suspect: ImageSet, reference: ImageSet,
                           track: Callable[[list[ImageRecord]], Iterable[ImageRecord]] = iter) -> ScreenedSets:
    """Describe every image once and ``screen`` the sets."""
    result = screen(describe_images(suspect, "suspect", track), describe_images(reference, "reference", track))

    def kept(images: ImageSet, described: list[DescribedImage]) -> ImageSet:
        keys = {image.record.sha256 for image in described}
        excluded = [record for record in images.records if record.sha256 not in keys]
        return replace(images, records=[record for record in images.records if record.sha256 in keys],
                       excluded=[*images.excluded, *excluded])

    return ScreenedSets(kept(suspect, result.suspect), kept(reference, result.reference), result)
