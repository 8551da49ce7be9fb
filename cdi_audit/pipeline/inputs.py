"""The two image sets of an audit, scanned, screened for copies and checked for size.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdi_audit.console import StageProgress
from cdi_audit.errors import InputProblem
from cdi_audit.inputs.images import ImageSet, scan_image_set
from cdi_audit.pipeline.settings import AuditSettings
from cdi_audit.verdict.screening import (
    ScreenedSets,
    reject_overlap,
    screen_near_duplicates,
)

MIN_IMAGES = 10
# What the two image sets of an audit are called in messages.
SET_ROLES = ("suspect", "reference")
LOW_POWER_IMAGES = 50
MAX_BALANCE_RATIO = 4.0


def require_enough(images: ImageSet, role: str, needed: int = MIN_IMAGES) -> None:
    if len(images) < needed:
        raise InputProblem(
            f"The {role} set {images.root} has {len(images)} usable image(s); this needs at least "
            f"{needed} (and {LOW_POWER_IMAGES} or more per set for useful power)."
        )


def _size_warnings(suspect: ImageSet, reference: ImageSet) -> list[str]:
    notes = [
        f"Only {len(images)} {role} images: power is low below {LOW_POWER_IMAGES} per set, "
        "so a no-evidence result says little."
        for images, role in ((suspect, "suspect"), (reference, "reference"))
        if len(images) < LOW_POWER_IMAGES
    ]
    ratio = max(len(suspect), len(reference)) / min(len(suspect), len(reference))
    if ratio > MAX_BALANCE_RATIO:
        notes.append(
            f"The sets are unbalanced ({len(suspect)} vs {len(reference)}); the test stays valid but loses power."
        )
    return notes


@dataclass(frozen=True)
class ScreenedInputs:
    """The screened image sets and the warnings their scan gave."""

    screened: ScreenedSets
    warnings: list[str]

    @property
    def suspect(self) -> ImageSet:
        return self.screened.suspect

    @property
    def reference(self) -> ImageSet:
        return self.screened.reference


def gather_images(settings: AuditSettings, progress: StageProgress) -> ScreenedInputs:
    """Scan, hash, validate and describe both sets; drop reference copies of suspect images and keep one image
    per group of near-duplicates; refuse what cannot give a valid audit."""
    suspect = scan_image_set(settings.suspect_dir, settings.strict, progress.track("hashing suspect images"))
    reference = scan_image_set(settings.reference_dir, settings.strict, progress.track("hashing reference images"))
    reject_overlap(suspect, reference)
    screened = screen_near_duplicates(suspect, reference, progress.track("image statistics"))
    require_enough(screened.suspect, "suspect")
    require_enough(screened.reference, "reference")
    notes = _size_warnings(screened.suspect, screened.reference)
    screen = screened.screen
    if screen.removed_from_reference:
        notes.append(f"{len(screen.removed_from_reference)} reference image(s) are near-duplicates of suspect "
                     "images (the same picture re-encoded, resized or edited) and were left out of the reference "
                     "set; they are listed under controls.near_duplicates.")
    if screen.groups:
        notes.append(f"{len(screen.groups)} group(s) of near-duplicate images within a set (the same picture "
                     f"re-encoded, resized or cropped) count as one image each: {len(screen.left_out)} copies were "
                     "left out of the test, as listed under controls.duplicate_groups.")
    return ScreenedInputs(screened, notes)
