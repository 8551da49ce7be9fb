"""One audit, stage by stage: images -> target -> features -> test and controls -> AuditResult.

``run_audit`` does the I/O and the model work; ``decision.decide`` turns a
feature table into a verdict without touching the model, so the statistics
can be rerun (and tested) from saved features.
"""

from __future__ import annotations

import platform
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from cdi_audit.cache import FeatureStore
from cdi_audit.console import StageProgress
from cdi_audit.errors import AuditError, InputProblem, InvalidSetting, SettingsProblem
from cdi_audit.features.table import FeatureTable, calibrated
from cdi_audit.inputs.images import ImageSet, scan_image_set, small_images_note
from cdi_audit.inputs.sharding import ALL, Shard
from cdi_audit.models.spec import ModelSpec
from cdi_audit.pipeline.settings import AuditSettings, ModelSettings
from cdi_audit.results.schema import (
    AuditResult,
    ControlModelResult,
    Controls,
    DuplicateGroupInfo,
    ExtractionInfo,
    ImageScore,
    LeftOutImage,
    ModelInfo,
    NearDuplicateInfo,
    PowerEstimate,
    SampleSizeCurve,
    SkippedFileInfo,
)
from cdi_audit.statistics.power import (
    CURVE_TEST,
    POWER_TARGET,
    curve_images_for_power,
    images_for_power,
)
from cdi_audit.statistics.testing import TestOutcome
from cdi_audit.verdict.control_model import ControlComparison, judge_with_control
from cdi_audit.verdict.controls import ConditionsSeen, shift_check
from cdi_audit.verdict.decision import decide
from cdi_audit.verdict.screening import (
    DuplicateGroup,
    NearDuplicate,
    Screen,
    ScreenedSets,
    reject_overlap,
    screen_near_duplicates,
)

if TYPE_CHECKING:  # torch-backed types, imported only when a model is used
    from cdi_audit.blackbox.variation import BlackBoxTarget
    from cdi_audit.features.base import Extractor
    from cdi_audit.models.target import Target

MIN_IMAGES = 10
# What the two image sets of an audit are called in messages.
SET_ROLES = ("suspect", "reference")
LOW_POWER_IMAGES = 50
MAX_BALANCE_RATIO = 4.0
TEST_DESCRIPTIONS = {
    "permutation": "permutation test of the Welch statistic on cross-fitted (5-fold) logistic-regression "
    "scores, one-sided, suspect > reference",
    "split": "single stratified split: logistic regression fitted on one half, one-sided Welch t-test "
    "suspect > reference on the held-out half",
}
VERSIONED_PACKAGES = ("cdi-audit", "torch", "diffusers", "numpy", "scipy", "scikit-learn", "pillow")


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
    """The screened image sets and the warnings their scan gave."""

    screened: ScreenedSets
    warnings: list[str]

    @property
    def suspect(self) -> ImageSet:
        return self.screened.suspect

    @property
    def reference(self) -> ImageSet:
        return self.screened.reference


def gather_images(settings: AuditSettings, progress: StageProgress) -> _Inputs:
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
    return _Inputs(screened, notes)


@dataclass(frozen=True)
class ModelFeatures:
    """Features of every image, and the image sets as the model saw them (with captions or class ids)."""

    table: FeatureTable
    summary: ExtractionInfo
    target: Target | BlackBoxTarget
    extractors: list[Extractor]
    image_sets: list[ImageSet]
    notes: list[str]


def open_target(settings: ModelSettings, store_root: Path | None) -> Target | BlackBoxTarget:
    """The model as the audit may use it: loaded locally (all it gives, or only through variations
    with ``access="blackbox"``), or reached through an endpoint (completed calls stored under
    ``store_root``)."""
    if settings.endpoint is not None:
        from cdi_audit.blackbox.endpoints import open_endpoint

        return open_endpoint(settings.endpoint, store_root)
    from cdi_audit.blackbox.variation import local_black_box

    target = settings.model.load(settings.machine)
    return local_black_box(target) if settings.access == "blackbox" else target


class ModelPool:
    """Local models kept loaded between the audits of a batch: loading a large model can take longer than
    auditing with it. Holds at most ``capacity`` models (a suspect and its control), dropping the least
    recently used; endpoints are cheap to open and are not kept."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self.loads = 0
        self._targets: OrderedDict[tuple, Target | BlackBoxTarget] = OrderedDict()

    def open(self, settings: ModelSettings, store_root: Path | None) -> Target | BlackBoxTarget:
        if settings.endpoint is not None:
            return open_target(settings, store_root)
        key = (settings.model.key, settings.access, settings.machine)
        if key in self._targets:
            self._targets.move_to_end(key)
            return self._targets[key]
        while len(self._targets) >= self.capacity:
            self._targets.popitem(last=False)
        self._targets[key] = open_target(settings, store_root)
        self.loads += 1
        return self._targets[key]


def public_configuration(settings: object) -> dict[str, str | int | float | bool | None]:
    """The effective settings (of an audit, an evaluation or a search) as the report records them: paths as
    text, model specs and the machine flattened, endpoint secrets left out."""
    configuration: dict[str, str | int | float | bool | None] = {}
    for key, value in vars(settings).items():
        if key == "endpoint":
            configuration.update(value.public() if value is not None else {})
        elif key in ("model", "control"):
            configuration.update(ModelSpec.public_of(value, "model" if key == "model" else "control_model"))
        elif key == "machine":
            configuration.update(vars(value))
        elif isinstance(value, tuple):
            configuration[key] = ",".join(map(str, value))
        else:
            configuration[key] = str(value) if isinstance(value, Path) else value
    return configuration


@dataclass(frozen=True)
class OpenedModel:
    """A model ready to extract from: its target, the extractors it serves, and the image sets with the
    conditions it sees them with (captions or class ids)."""

    target: Target | BlackBoxTarget
    extractors: list[Extractor]
    image_sets: list[ImageSet]
    notes: list[str]


def open_model(settings: ModelSettings, image_sets: list[ImageSet], progress: StageProgress,
               timings: dict[str, float], role: str = "",
               check_target: Callable[[Target | BlackBoxTarget], None] | None = None,
               models: ModelPool | None = None, set_roles: tuple[str, ...] = SET_ROLES) -> OpenedModel:
    """Load the model, check it can serve the features, and attach the conditions it needs; sets whose
    conditions follow different rules (``set_roles`` names them) are refused before any feature is extracted.
    ``role`` prefixes timing keys and progress labels (e.g. "control_" for the control model); ``check_target``
    may refuse the loaded model; ``models`` keeps loaded models for later audits."""
    from cdi_audit.features.registry import extractors_for, require_access
    from cdi_audit.inputs.conditions import require_alike, with_conditions

    with timed(timings, role + "load_model"):
        target = (models.open(settings, settings.store_root) if models is not None
                  else open_target(settings, settings.store_root))
    if check_target is not None:
        check_target(target)
    extractors, notes = extractors_for(settings.features, target)
    notes[:0] = target.notes
    require_access(target.access, extractors)
    if target.access == "black":
        target.on_calls_done = progress.counter(role.replace("_", " ") + "endpoint calls (this batch)")
    conditioned = []
    for images in image_sets:
        with_condition, set_notes = with_conditions(images, target.conditioning, settings.caption)
        conditioned.append(with_condition)
        notes.extend(note for note in set_notes if note not in notes)
    require_alike(list(zip(set_roles, conditioned, strict=True)))
    small = small_images_note([record for images in conditioned for record in images.records], target.sample_size)
    if small is not None:
        notes.append(small)
    return OpenedModel(target, extractors, conditioned, notes)


def extract_opened(settings: ModelSettings, opened: OpenedModel, progress: StageProgress,
                   timings: dict[str, float], role: str = "") -> ModelFeatures:
    """The features of every image of ``opened``'s sets (through the cache)."""
    from cdi_audit.pipeline.extraction import extract_features

    store = FeatureStore(settings.store_root) if settings.store_root is not None else None
    records = [record for images in opened.image_sets for record in images.records]
    with timed(timings, role + "extract"):
        table, summary = extract_features(
            records, opened.target, opened.extractors, settings.seed, settings.batch_size, store,
            progress.counter(role.replace("_", " ") + "extracting features (images)"), settings.max_batch_grad,
        )
    return ModelFeatures(table, summary, opened.target, opened.extractors, opened.image_sets, opened.notes)


def load_and_extract(settings: ModelSettings, image_sets: list[ImageSet], progress: StageProgress,
                     timings: dict[str, float], role: str = "",
                     check_target: Callable[[Target | BlackBoxTarget], None] | None = None,
                     models: ModelPool | None = None, set_roles: tuple[str, ...] = SET_ROLES) -> ModelFeatures:
    """``open_model`` then ``extract_opened``: the features of every image on one model."""
    opened = open_model(settings, image_sets, progress, timings, role, check_target, models, set_roles)
    return extract_opened(settings, opened, progress, timings, role)


def on_model(settings: ModelSettings, model: ModelSpec, extractors: list[Extractor]) -> ModelSettings:
    """The same settings on another model, with exactly the extractors ``extractors`` (so a preset cannot
    resolve to other features there). Calibration is a choice about adapters: a model without them (an adapted
    model's base) keeps the default."""
    return replace(settings, model=model, features=",".join(dict.fromkeys(extractor.name for extractor in extractors)),
                   calibration=settings.calibration or not model.adapters)


def control_settings(settings: AuditSettings, extractors: list[Extractor]) -> AuditSettings:
    """The control model audited like the suspect: the same features and seed, through the same kind of
    access (black-box, by local variations, when the suspect is an endpoint or audited black-box)."""
    black_box = settings.endpoint is not None or settings.access == "blackbox"
    return replace(on_model(settings, settings.control_model, extractors), control=None, endpoint=None,
                   access="blackbox" if black_box else "auto")


def extract_with_control(settings: AuditSettings, suspect: ModelFeatures, image_sets: list[ImageSet],
                         progress: StageProgress, timings: dict[str, float],
                         models: ModelPool | None = None) -> ModelFeatures:
    """Features of the same images from the control model; its errors name it, and the suspect model itself
    is refused as its own control."""
    fingerprint = suspect.target.description.fingerprint

    def refuse_suspect_model(target: Target | BlackBoxTarget) -> None:
        if target.description.fingerprint == fingerprint:
            raise SettingsProblem(
                "it has the same content fingerprint as the suspect model, so it cannot be a control; give a "
                "model known not to have seen the suspect images (for a fine-tune, its base model).")

    try:
        control = load_and_extract(control_settings(settings, suspect.extractors), image_sets, progress, timings,
                                   "control_", refuse_suspect_model, models)
    except InvalidSetting as error:
        raise SettingsProblem(f"{settings.control_label} {settings.control_model.path}: {error}") from error
    except AuditError as error:
        raise type(error)(f"{settings.control_label} {settings.control_model.path}: {error}") from error
    missing = sorted(set(suspect.table.columns) - set(control.table.columns))
    if missing:
        control.notes.append(f"The control model could not serve {', '.join(missing)}; its effect is measured "
                             "without them.")
    return control


def control_model_result(comparison: ControlComparison, control: ModelFeatures) -> ControlModelResult:
    decision = comparison.decision
    outcome = decision.outcome
    scored = outcome is not None and not outcome.degenerate
    return ControlModelResult(
        model=control.target.description, reason=decision.reason,
        p_value=outcome.p_value if outcome else None,
        statistic=outcome.statistic if scored else None,
        permutations_run=outcome.permutations_run if outcome else None,
        effect=decision.effect,
        negative_control_p_value=decision.negative_control.p_value if decision.negative_control else None,
        separates_sets=comparison.separates_sets, auc_difference=comparison.auc_difference,
        auc_difference_ci=comparison.auc_difference_ci, auc_difference_level=comparison.level,
        passed=comparison.passed,
        features=list(decision.used_columns), extraction=control.summary,
    )


def run_extraction(settings: ModelSettings, folders: list[Path], shard: Shard = ALL,
                   progress: StageProgress | None = None) -> tuple[ExtractionInfo, ModelInfo]:
    """Features only, into the cache (``cdi-audit extract``): the images of ``shard`` in ``folders``, on the
    model and, for an adapted model, on its base (the control and calibration of its check). A later ``check``
    with the same model, features and seed reads them back and makes no model call for them."""
    if not settings.use_cache:
        raise SettingsProblem("extraction only fills the feature cache; it cannot run with --no-cache.")
    progress = progress or StageProgress()
    image_sets = [shard.select(scan_image_set(folder, settings.strict, progress.track(f"hashing {folder.name}")))
                  for folder in folders]
    extracted = load_and_extract(settings, image_sets, progress, {})
    if settings.model is not None and settings.model.adapters:  # an adapter's check also needs its base's
        load_and_extract(on_model(settings, settings.model.base, extracted.extractors), image_sets, progress, {},
                         "base_")
    return extracted.summary, extracted.target.description


def _near_duplicate_info(pair: NearDuplicate, removed: bool) -> NearDuplicateInfo:
    return NearDuplicateInfo(first_path=str(pair.first.record.path.resolve()), first_role=pair.first.role,
                             second_path=str(pair.second.record.path.resolve()), second_role=pair.second.role,
                             distance=pair.distance, correlation=pair.correlation,
                             framed_correlation=pair.framed_correlation, removed=removed)


def near_duplicate_infos(screen: Screen) -> list[NearDuplicateInfo]:
    left_out = {image.record.sha256 for image in screen.left_out}
    return ([_near_duplicate_info(pair, True) for pair in screen.removed_from_reference]
            + [_near_duplicate_info(pair, bool({pair.first.record.sha256, pair.second.record.sha256} & left_out))
               for pair in screen.within_sets])


def duplicate_group_info(group: DuplicateGroup) -> DuplicateGroupInfo:
    return DuplicateGroupInfo(role=group.role, kept_path=str(group.kept.record.path.resolve()),
                              kept_sha256=group.kept.record.sha256,
                              left_out=[LeftOutImage(path=str(image.record.path.resolve()), sha256=image.record.sha256)
                                        for image in group.left_out])


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


def conditions_seen(opened: OpenedModel) -> ConditionsSeen | None:
    """What the model sees besides pixels, image by image, for the shift check: captions for a text-to-image
    model, class ids for a class-conditional one, nothing otherwise."""
    kind = opened.target.conditioning
    if kind not in ("text", "class"):
        return None
    records = [record for images in opened.image_sets for record in images.records]
    return ConditionsSeen(kind, {record.sha256: record.caption if kind == "text" else record.label
                                 for record in records})


def run_audit(settings: AuditSettings, progress: StageProgress | None = None,
              models: ModelPool | None = None) -> AuditResult:
    """Run one audit end to end. Raises ``AuditError`` subclasses for inputs or models it cannot use.
    ``models`` reuses models loaded by earlier audits (batches)."""
    progress = progress or StageProgress()
    timings: dict[str, float] = {}
    with timed(timings, "scan"):
        inputs = gather_images(settings, progress)
    opened = open_model(settings, [inputs.suspect, inputs.reference], progress, timings, models=models)
    with timed(timings, "shift_check"):
        shift = shift_check(inputs.screened.screen.suspect, inputs.screened.screen.reference,
                            settings.shift_alpha, settings.seed, settings.permutations, settings.n_jobs,
                            progress.counter("shift check (image statistics)"), conditions=conditions_seen(opened))
    extracted = extract_opened(settings, opened, progress, timings)
    table, summary, target = extracted.table, extracted.summary, extracted.target
    suspect, reference = extracted.image_sets
    control_features = control_decision = None
    if settings.control_model is not None:
        control_features = extract_with_control(settings, extracted, [inputs.suspect, inputs.reference], progress,
                                                timings, models)
        control_suspect, control_reference = control_features.image_sets
        with timed(timings, "control_test"):
            control_decision = decide(control_features.table, control_suspect.keys, control_reference.keys,
                                      alpha=settings.alpha, test=settings.test, seed=settings.seed,
                                      permutations=settings.permutations, n_jobs=settings.n_jobs,
                                      progress=progress, curve_resamples=0)
        if settings.calibrated:
            table = calibrated(table, control_features.table)
    with timed(timings, "test"):
        decision = decide(table, suspect.keys, reference.keys, alpha=settings.alpha, test=settings.test,
                          seed=settings.seed, permutations=settings.permutations, n_jobs=settings.n_jobs,
                          progress=progress, curve_resamples=settings.curve_resamples, shift=shift,
                          calibrated=settings.calibrated)
    control_model = None
    if control_features is not None:
        decision, comparison = judge_with_control(decision, control_decision, settings.alpha, settings.seed,
                                                  against_base=settings.control_is_base)
        control_model = control_model_result(comparison, control_features)
        extracted.notes.extend(f"{settings.control_label}: {note}" for note in control_features.notes)
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
        effect=effect,
        features=list(decision.used_columns),
        dropped_features=list(decision.dropped),
        controls=Controls(
            negative_control_p_value=control.p_value if control else None,
            negative_control_passed=(control.p_value >= settings.alpha) if control else None,
            shift_p_value=shift.p_value,
            shift_alpha=shift.alpha,
            shift_passed=shift.passed,
            shift_statistics=list(shift.most_different),
            near_duplicates=near_duplicate_infos(inputs.screened.screen),
            duplicate_groups=[duplicate_group_info(group) for group in inputs.screened.screen.groups],
            control_model=control_model,
        ),
        model=target.description,
        calibration="base" if settings.calibrated else None,
        seed=settings.seed,
        suspect_dir=str(settings.suspect_dir),
        reference_dir=str(settings.reference_dir),
        skipped_files=skipped,
        warnings=inputs.warnings + extracted.notes,
        extraction=summary,
        timings_seconds=timings,
        versions=package_versions(),
        configuration=public_configuration(settings),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        images=image_scores(suspect, reference, outcome),
        sample_size_curve=SampleSizeCurve(
            test=CURVE_TEST, seed=settings.seed, points=list(decision.curve)
        ) if decision.curve else None,
        feature_diagnostics=list(decision.diagnostics),
        power=PowerEstimate(
            target_power=POWER_TARGET, cohens_d=effect.cohens_d,
            images_per_set_from_effect=images_for_power(effect.cohens_d, settings.alpha),
            images_per_set_from_curve=curve_images_for_power(list(decision.curve)) if decision.curve else None,
        ) if effect else None,
    )
