"""Near-duplicates within a set are one unit of the test: the screen finds planted copies (re-encodes, resizes,
light crops), keeps one image per group, and null audits with planted groups keep their false-positive rate.

The null audits use the sample model's real features of never-trained crops (sample_data's pool of photographs)
and each drawn suspect set holds every image twice: the picture and a planted copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA, _sample_data_builder
from PIL import Image
from scipy import stats

from cdi_audit.features.registry import resolve_extractors
from cdi_audit.inputs.images import scan_image_set
from cdi_audit.models.loading import load_target
from cdi_audit.pipeline.extraction import extract_features
from cdi_audit.statistics.testing import permutation_test
from cdi_audit.verdict.screening import DescribedImage, describe_images, near_duplicates, screen

POOL = 160  # never-trained crops; each also gets a planted copy
SUSPECT, REFERENCE = 30, 60  # pictures per drawn audit (the suspect set holds each twice: 60 files)
COPY_KINDS = ("jpeg92", "resize24", "resize44", "trim")


def planted_copy(picture: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """A copy of ``picture`` as owners make them: a JPEG re-encode, a resize, or a light crop (1-3 of its 32
    pixels trimmed off one to four sides: at most 10% per side)."""
    if kind == "jpeg92":
        return picture, {"quality": 92}
    if kind.startswith("resize"):
        side = int(kind.removeprefix("resize"))
        return picture.resize((side, side), Image.Resampling.LANCZOS), {}
    trims = rng.integers(0, 4, size=4) * (rng.random(4) < 0.6)
    trims[rng.integers(4)] = max(1, trims.max())  # at least one side trimmed
    left, top, right, bottom = (int(t) for t in trims)
    return picture.crop((left, top, picture.width - right, picture.height - bottom)), {}


@dataclass(frozen=True)
class Pool:
    originals: list[DescribedImage]
    copies: list[DescribedImage]
    kinds: list[str]


def build_pool(root: Path) -> Pool:
    """POOL crops the sample model never saw and a planted copy of each, described as the screen sees them."""
    builder = _sample_data_builder()
    rng = np.random.default_rng(2024)
    crops = builder.random_crops(builder.source_photographs(), POOL, rng)
    (root / "originals").mkdir()
    (root / "copies").mkdir()
    kinds = [COPY_KINDS[index % len(COPY_KINDS)] for index in range(POOL)]
    for index, (crop, kind) in enumerate(zip(crops, kinds, strict=True)):
        crop.save(root / "originals" / f"{index:03d}.png")
        copy, options = planted_copy(crop, kind, rng)
        copy.save(root / "copies" / f"{index:03d}.{'jpg' if kind == 'jpeg92' else 'png'}", **options)
    originals = describe_images(scan_image_set(root / "originals"), "suspect")
    copies = describe_images(scan_image_set(root / "copies"), "suspect")
    return Pool(originals, copies, kinds)


def sample_model_features(pool: Pool) -> dict[str, np.ndarray]:
    """sha256 -> the sample model's ``fast`` features of every pool image, as the audit's scoring matrix has
    them (log-scaled columns)."""
    target = load_target(SAMPLE_DATA / "model", torch.device("cpu"))
    records = [image.record for image in pool.originals + pool.copies]
    table, _ = extract_features(records, target, resolve_extractors("fast"), seed=0, batch_size=64)
    matrix = table.scoring_matrix([record.key for record in records])
    return {record.sha256: row for record, row in zip(records, matrix, strict=True)}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Pool:
    return build_pool(tmp_path_factory.mktemp("duplicate-pool"))


def test_the_screen_finds_planted_copies_and_keeps_one_image_of_each(pool: Pool) -> None:
    found = {kind: 0 for kind in COPY_KINDS}
    for original, copy, kind in zip(pool.originals, pool.copies, pool.kinds, strict=True):
        found[kind] += bool(near_duplicates([original], [copy]))
    per_kind = POOL // len(COPY_KINDS)
    assert found["jpeg92"] == found["resize24"] == found["resize44"] == per_kind
    assert found["trim"] >= 0.9 * per_kind, found
    distinct = near_duplicates(pool.originals)
    assert len(distinct) <= 3, [(pair.first.record.path.name, pair.second.record.path.name) for pair in distinct]
    suspect = pool.originals[:SUSPECT] + pool.copies[:SUSPECT]
    result = screen(suspect, pool.originals[SUSPECT:SUSPECT + REFERENCE])
    # One image per picture: the copy with the most pixels (then the larger file) stays, the other is left out.
    in_suspect = {id(image) for image in suspect}
    groups = [group for group in result.groups if id(group.kept) in in_suspect]
    assert len(groups) == SUSPECT and len(result.suspect) == SUSPECT
    assert {image.record.path.stem for image in result.suspect} == {image.record.path.stem for image in suspect}
    for group in groups:
        (other,) = group.left_out
        size = (group.kept.pixels, group.kept.record.path.stat().st_size)
        assert size >= (other.pixels, other.record.path.stat().st_size) and group.kept.record.path.stem == \
            other.record.path.stem
    assert sum(image.pixels == 44 * 44 for image in result.suspect) == sum(
        kind == "resize44" for kind in pool.kinds[:SUSPECT])
    # Distinct crops that overlap much (cut from the same photograph) may be grouped, never a copy of the suspect.
    assert len(result.reference) >= REFERENCE - 2 and not result.removed_from_reference


def null_rejections(pool: Pool, features: dict[str, np.ndarray], draws: int, alpha: float, permutations: int,
                    grouped: bool) -> int:
    """How many of ``draws`` null audits (suspect: SUSPECT never-trained pictures and a copy of each;
    reference: REFERENCE other never-trained pictures) the permutation test rejects at ``alpha``, with the
    screen's units (``grouped``) or with every file as a unit (as before the screen kept one per group)."""
    rejections = 0
    for draw in range(draws):
        order = np.random.default_rng([7, draw]).permutation(POOL)
        chosen, others = order[:SUSPECT], order[SUSPECT:SUSPECT + REFERENCE]
        suspect = [pool.originals[i] for i in chosen] + [pool.copies[i] for i in chosen]
        reference = [pool.originals[i] for i in others]
        if grouped:
            result = screen(suspect, reference)
            suspect, reference = result.suspect, result.reference
        rows = np.stack([features[image.record.sha256] for image in suspect + reference])
        is_suspect = np.r_[np.ones(len(suspect), bool), np.zeros(len(reference), bool)]
        outcome = permutation_test(rows, is_suspect, permutations, seed=draw)
        rejections += outcome.p_value < alpha
    return rejections


@pytest.mark.slow
def test_null_audits_with_planted_duplicate_groups_keep_their_false_positive_rate(pool: Pool) -> None:
    """200 null audits at alpha 0.05 (B = 100): with the screen's groups as units, the rejections stay within
    the binomial 99.9% bound of alpha (measured: 9 of 200, and 4 of 200 at alpha 0.01); with every file as
    a unit they do not (measured: 22 of 100), so the test can fail."""
    features = sample_model_features(pool)
    alpha = 0.05
    grouped = null_rejections(pool, features, 200, alpha, permutations=100, grouped=True)
    assert grouped <= stats.binom.ppf(0.999, 200, alpha), grouped
    ungrouped = null_rejections(pool, features, 100, alpha, permutations=100, grouped=False)
    assert ungrouped > stats.binom.ppf(0.999, 100, alpha), ungrouped
