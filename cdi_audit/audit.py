"""One audit, stage by stage: images -> target -> features -> test and controls -> AuditResult.

``run_audit`` does the I/O and the model work; ``decide`` turns a feature
table into a verdict without touching the model, so the statistics can be
rerun (and tested) from saved features.
"""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cdi_audit.cache import FeatureStore, default_cache_dir
from cdi_audit.console import StageProgress
from cdi_audit.controls import (
    DEFAULT_SHIFT_ALPHA,
    NearDuplicate,
    ScreenedSets,
    ShiftCheck,
    negative_control,
    reject_overlap,
    screen_near_duplicates,
    shift_check,
)
from cdi_audit.diagnostics import FeatureDiagnostic, feature_diagnostics
from cdi_audit.errors import InputProblem
from cdi_audit.features.table import FeatureTable
from cdi_audit.images import ImageSet, scan_image_set
from cdi_audit.power import (
    CURVE_TEST,
    DEFAULT_CURVE_RESAMPLES,
    POWER_TARGET,
    SampleSizePoint,
    curve_images_for_power,
    images_for_power,
    sample_size_curve,
)
from cdi_audit.result import (
    AuditResult,
    Controls,
    DroppedFeature,
    Effect,
    ExtractionInfo,
    FeatureDiagnosticRow,
    ImageScore,
    NearDuplicateInfo,
    PowerEstimate,
    SampleSizeCurve,
    SampleSizeCurvePoint,
    ShiftStatisticInfo,
    SkippedFileInfo,
    Verdict,
)
from cdi_audit.stats import EffectSize, TestName, TestOutcome, effect_size, run_test

if TYPE_CHECKING:  # torch-backed types, imported only when a model is used
    from cdi_audit.extraction import ExtractionSummary
    from cdi_audit.features.base import Extractor
    from cdi_audit.targets.base import Target
    from cdi_audit.targets.blackbox import BlackBoxTarget
    from cdi_audit.targets.endpoints import EndpointSettings

MIN_IMAGES = 10
LOW_POWER_IMAGES = 50
MAX_BALANCE_RATIO = 4.0
TEST_DESCRIPTIONS = {
    "permutation": "permutation test of the Welch statistic on cross-fitted (5-fold) logistic-regression "
    "scores, one-sided, suspect > reference",
    "split": "single stratified split: logistic regression fitted on one half, one-sided Welch t-test "
    "suspect > reference on the held-out half",
}
VERSIONED_PACKAGES = ("cdi-audit", "torch", "diffusers", "numpy", "scipy", "scikit-learn", "pillow")


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """How features are computed: shared by ``check`` and ``evaluate``."""

    model_path: Path | None = None  # None when the model is reached through ``endpoint``
    model_config: Path | None = None  # configs of a single-file checkpoint
    access: str = "auto"  # "auto": all a local model gives; "blackbox": use it through variations only
    endpoint: EndpointSettings | None = None
    features: str = "auto"
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 32
    max_batch_grad: int = 16
    caption: str | None = None  # one caption for every image (text-to-image models)
    cache_dir: Path | None = None
    use_cache: bool = True
    strict: bool = False
    n_jobs: int = 1


@dataclass(frozen=True, kw_only=True)
class AuditSettings(ModelSettings):
    suspect_dir: Path
    reference_dir: Path
    alpha: float = 0.01
    test: TestName = "permutation"
    permutations: int = 1000
    curve_resamples: int = DEFAULT_CURVE_RESAMPLES  # 0: no sample-size curve
    shift_alpha: float = DEFAULT_SHIFT_ALPHA


@dataclass(frozen=True)
class Decision:
    """The statistics of one audit: the verdict and everything it rests on."""

    verdict: Verdict
    reason: str
    used_columns: tuple[str, ...]
    dropped: tuple[DroppedFeature, ...]
    outcome: TestOutcome | None = None
    effect: EffectSize | None = None
    negative_control: TestOutcome | None = None
    curve: tuple[SampleSizePoint, ...] = ()
    diagnostics: tuple[FeatureDiagnostic, ...] = ()


def _usable_columns(table: FeatureTable, matrix: np.ndarray) -> tuple[list[int], list[DroppedFeature]]:
    """Columns that vary across images; constant ones carry no information and are dropped, by name."""
    keep, dropped = [], []
    for index, column in enumerate(table.columns):
        if np.ptp(matrix[:, index]) > 0:
            keep.append(index)
        else:
            dropped.append(DroppedFeature(name=column, reason="constant across all images"))
    return keep, dropped


def decide(
    table: FeatureTable,
    suspect_hashes: list[str],
    reference_hashes: list[str],
    alpha: float,
    test: TestName,
    seed: int,
    permutations: int,
    n_jobs: int = 1,
    progress: StageProgress | None = None,
    curve_resamples: int = DEFAULT_CURVE_RESAMPLES,
    shift: ShiftCheck | None = None,
) -> Decision:
    """Test whether the model scores the suspect images as more member-like than the reference images.

    ``evidence`` needs p < alpha, a passing negative control and (when given)
    a passing shift check; a failed control or degenerate scores give
    ``inconclusive``, never ``evidence``.
    """
    progress = progress or StageProgress()
    matrix = table.scoring_matrix([*suspect_hashes, *reference_hashes])
    is_suspect = np.r_[np.ones(len(suspect_hashes), bool), np.zeros(len(reference_hashes), bool)]
    keep, dropped = _usable_columns(table, matrix)
    used = tuple(table.columns[i] for i in keep)
    if not keep:
        return Decision("inconclusive", "Every feature was constant across the images, so nothing can be tested.",
                        used, tuple(dropped))
    matrix = matrix[:, keep]
    outcome = run_test(test, matrix, is_suspect, seed, permutations, n_jobs, progress.counter("permutation test"))
    if outcome.degenerate:
        return Decision("inconclusive", "The scoring model gave every image the same score; the test is undefined.",
                        used, tuple(dropped), outcome)
    effect = effect_size(outcome.scores, outcome.is_suspect, seed)
    control = negative_control(matrix[~is_suspect], test, seed, permutations, n_jobs,
                               progress.counter("negative control"))
    curve = tuple(sample_size_curve(matrix, is_suspect, alpha, seed, curve_resamples)) if curve_resamples else ()
    diagnostics = tuple(feature_diagnostics(matrix, is_suspect, used, seed))
    if shift is not None and not shift.passed:
        verdict, reason = "inconclusive", shift_reason(shift, outcome.p_value)
    elif control.p_value < alpha:
        verdict, reason = "inconclusive", (
            f"The negative control (two random halves of the reference set) came out significant "
            f"(p = {control.p_value:.3g} < {alpha}), which should not happen; the result is not trusted."
        )
    elif outcome.p_value < alpha:
        verdict, reason = "evidence", (
            f"The model scores the suspect images as more member-like than the reference images "
            f"(p = {outcome.p_value:.3g} < alpha = {alpha}): evidence that they were used in training."
        )
    else:
        verdict, reason = "no_evidence", (
            f"No significant difference between suspect and reference images (p = {outcome.p_value:.3g} "
            f">= alpha = {alpha}); this does not prove the images were not used."
        )
    return Decision(verdict, reason, used, tuple(dropped), outcome, effect, control, curve, diagnostics)


def shift_reason(shift: ShiftCheck, membership_p: float) -> str:
    differences = ", ".join(f"{item.name} (suspect mean {item.suspect_mean:.3g}, reference {item.reference_mean:.3g})"
                            for item in shift.most_different[:3])
    return (f"The suspect and reference images can be told apart without the model (shift check p = "
            f"{shift.p_value:.3g} < {shift.alpha:g}; most different: {differences}). The model-based difference "
            f"(p = {membership_p:.3g}) could come from that, not from training, so it is not trusted; use "
            "reference images from the same source as the suspect images.")


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


@contextmanager
def timed(timings: dict[str, float], stage: str):
    started = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - started, 3)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@dataclass(frozen=True)
class _Inputs:
    suspect: ImageSet
    reference: ImageSet
    screened: ScreenedSets
    warnings: list[str]


def gather_images(settings: AuditSettings, progress: StageProgress) -> _Inputs:
    """Scan, hash, validate and describe both sets; drop reference copies of suspect images; refuse what
    cannot give a valid audit."""
    suspect = scan_image_set(settings.suspect_dir, settings.strict, progress.track("hashing suspect images"))
    reference = scan_image_set(settings.reference_dir, settings.strict, progress.track("hashing reference images"))
    reject_overlap(suspect, reference)
    screened = screen_near_duplicates(suspect, reference, progress.track("image statistics"))
    require_enough(screened.suspect, "suspect")
    require_enough(screened.reference, "reference")
    notes = _size_warnings(screened.suspect, screened.reference)
    if screened.removed_from_reference:
        notes.append(f"{len(screened.removed_from_reference)} reference image(s) are near-duplicates of suspect "
                     "images (the same picture re-encoded, resized or edited) and were left out of the reference "
                     "set; they are listed under controls.near_duplicates.")
    if screened.within_sets:
        notes.append(f"{len(screened.within_sets)} pair(s) of near-duplicate images within a set (listed under "
                     "controls.near_duplicates); each copy counts as one more image.")
    return _Inputs(screened.suspect, screened.reference, screened, notes)


@dataclass(frozen=True)
class ModelFeatures:
    """Features of every image, and the image sets as the model saw them (with captions or class ids)."""

    table: FeatureTable
    summary: ExtractionSummary
    target: Target | BlackBoxTarget
    extractors: list[Extractor]
    image_sets: list[ImageSet]
    notes: list[str]


def open_target(settings: ModelSettings, store_root: Path | None) -> Target | BlackBoxTarget:
    """The model as the audit may use it: loaded locally (all it gives, or only through variations
    with ``access="blackbox"``), or reached through an endpoint (completed calls stored under
    ``store_root``)."""
    if settings.endpoint is not None:
        from cdi_audit.targets.endpoints import open_endpoint

        return open_endpoint(settings.endpoint, store_root)
    from cdi_audit.targets.blackbox import local_black_box
    from cdi_audit.targets.loading import load_target, resolve_device, resolve_dtype

    device = resolve_device(settings.device)
    target = load_target(settings.model_path, device, resolve_dtype(settings.dtype, device), settings.model_config)
    return local_black_box(target) if settings.access == "blackbox" else target


def public_configuration(settings: ModelSettings) -> dict[str, str | int | float | bool | None]:
    """The effective settings as the report records them: paths as text, endpoint secrets left out."""
    configuration: dict[str, str | int | float | bool | None] = {}
    for key, value in vars(settings).items():
        if key == "endpoint":
            configuration.update(value.public() if value is not None else {})
        elif isinstance(value, tuple):
            configuration[key] = ",".join(map(str, value))
        else:
            configuration[key] = str(value) if isinstance(value, Path) else value
    return configuration


def load_and_extract(settings: ModelSettings, image_sets: list[ImageSet], progress: StageProgress,
                     timings: dict[str, float]) -> ModelFeatures:
    """Load the model, check it can serve the features, attach the conditions it needs, and extract
    the features of every image (through the cache)."""
    from cdi_audit.conditions import with_conditions
    from cdi_audit.extraction import extract_features
    from cdi_audit.features.registry import extractors_for, require_access

    store_root = (settings.cache_dir or default_cache_dir()) if settings.use_cache else None
    with timed(timings, "load_model"):
        target = open_target(settings, store_root)
    extractors, notes = extractors_for(settings.features, target)
    require_access(target.access, extractors)
    if target.access == "black":
        target.on_calls_done = progress.counter("endpoint calls (this batch)")
    conditioned = []
    for images in image_sets:
        with_condition, set_notes = with_conditions(images, target.conditioning, settings.caption)
        conditioned.append(with_condition)
        notes.extend(note for note in set_notes if note not in notes)
    store = FeatureStore(store_root) if store_root is not None else None
    records = [record for images in conditioned for record in images.records]
    with timed(timings, "extract"):
        table, summary = extract_features(
            records, target, extractors, settings.seed, settings.batch_size, store,
            progress.counter("extracting features (images)"), settings.max_batch_grad,
        )
    return ModelFeatures(table, summary, target, extractors, conditioned, notes)


def _near_duplicate_info(pair: NearDuplicate, removed: bool) -> NearDuplicateInfo:
    return NearDuplicateInfo(first_path=str(pair.first.record.path.resolve()), first_role=pair.first.role,
                             second_path=str(pair.second.record.path.resolve()), second_role=pair.second.role,
                             distance=pair.distance, correlation=pair.correlation, removed=removed)


def near_duplicate_infos(screened: ScreenedSets) -> list[NearDuplicateInfo]:
    return ([_near_duplicate_info(pair, True) for pair in screened.removed_from_reference]
            + [_near_duplicate_info(pair, False) for pair in screened.within_sets])


def image_scores(suspect: ImageSet, reference: ImageSet, outcome: TestOutcome | None) -> list[ImageScore]:
    """Every input image with its role and the score the test gave it (rows: suspect, then reference)."""
    labelled = [(record, "suspect") for record in suspect.records] + [(r, "reference") for r in reference.records]
    scores: list[float | None] = [None] * len(labelled)
    if outcome is not None and not outcome.degenerate:
        rows = outcome.rows if outcome.rows is not None else range(len(labelled))
        for row, score in zip(rows, outcome.scores, strict=True):
            scores[int(row)] = float(score)
    return [ImageScore(path=str(record.path.resolve()), sha256=record.sha256, role=role, score=score)
            for (record, role), score in zip(labelled, scores, strict=True)]


def run_audit(settings: AuditSettings, progress: StageProgress | None = None) -> AuditResult:
    """Run one audit end to end. Raises ``AuditError`` subclasses for inputs or models it cannot use."""
    progress = progress or StageProgress()
    timings: dict[str, float] = {}
    with timed(timings, "scan"):
        inputs = gather_images(settings, progress)
    with timed(timings, "shift_check"):
        shift = shift_check(inputs.screened.suspect_described, inputs.screened.reference_described,
                            settings.shift_alpha, settings.seed, settings.permutations, settings.n_jobs,
                            progress.counter("shift check (image statistics)"))
    extracted = load_and_extract(settings, [inputs.suspect, inputs.reference], progress, timings)
    table, summary, target = extracted.table, extracted.summary, extracted.target
    suspect, reference = extracted.image_sets
    with timed(timings, "test"):
        decision = decide(table, suspect.keys, reference.keys, settings.alpha, settings.test,
                          settings.seed, settings.permutations, settings.n_jobs, progress, settings.curve_resamples,
                          shift)
    outcome, control, effect = decision.outcome, decision.negative_control, decision.effect
    skipped = [
        SkippedFileInfo(path=item.path, reason=item.reason, image_set=role)
        for images, role in ((inputs.suspect, "suspect"), (inputs.reference, "reference"))
        for item in images.skipped
    ]
    return AuditResult(
        verdict=decision.verdict,
        verdict_reason=decision.reason,
        p_value=outcome.p_value if outcome else None,
        alpha=settings.alpha,
        test=settings.test,
        test_description=TEST_DESCRIPTIONS[settings.test],
        statistic=outcome.statistic if outcome and not outcome.degenerate else None,
        permutations_requested=settings.permutations if settings.test == "permutation" else None,
        permutations_run=outcome.permutations_run if outcome else None,
        n_suspect=len(inputs.suspect),
        n_reference=len(inputs.reference),
        effect=Effect(**vars(effect)) if effect else None,
        features=list(decision.used_columns),
        dropped_features=list(decision.dropped),
        controls=Controls(
            negative_control_p_value=control.p_value if control else None,
            negative_control_passed=(control.p_value >= settings.alpha) if control else None,
            shift_p_value=shift.p_value,
            shift_alpha=shift.alpha,
            shift_passed=shift.passed,
            shift_statistics=[ShiftStatisticInfo(**vars(item)) for item in shift.most_different],
            near_duplicates=near_duplicate_infos(inputs.screened),
        ),
        model=target.description,
        seed=settings.seed,
        suspect_dir=str(settings.suspect_dir),
        reference_dir=str(settings.reference_dir),
        skipped_files=skipped,
        warnings=inputs.warnings + extracted.notes,
        extraction=ExtractionInfo(**vars(summary)),
        timings_seconds=timings,
        versions=package_versions(),
        configuration=public_configuration(settings),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        images=image_scores(suspect, reference, outcome),
        sample_size_curve=SampleSizeCurve(
            test=CURVE_TEST, seed=settings.seed, points=[SampleSizeCurvePoint(**vars(p)) for p in decision.curve]
        ) if decision.curve else None,
        feature_diagnostics=[FeatureDiagnosticRow(**vars(row)) for row in decision.diagnostics],
        power=PowerEstimate(
            target_power=POWER_TARGET, cohens_d=effect.cohens_d,
            images_per_set_from_effect=images_for_power(effect.cohens_d, settings.alpha),
            images_per_set_from_curve=curve_images_for_power(list(decision.curve)) if decision.curve else None,
        ) if effect else None,
    )
