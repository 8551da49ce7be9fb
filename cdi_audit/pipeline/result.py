"""Assembling an audit's ``AuditResult`` (report.json) from its stages: what was decided, on which images and
model, with which settings and package versions.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from cdi_audit.inputs.images import ImageSet
from cdi_audit.models.spec import ModelSpec
from cdi_audit.pipeline.inputs import ScreenedInputs
from cdi_audit.pipeline.model_features import ModelFeatures
from cdi_audit.pipeline.settings import AuditSettings
from cdi_audit.results.schema import (
    AuditResult,
    ControlModelResult,
    Controls,
    DuplicateGroupInfo,
    ImageScore,
    LeftOutImage,
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
from cdi_audit.verdict.control_model import ControlComparison
from cdi_audit.verdict.controls import ShiftCheck
from cdi_audit.verdict.decision import Decision
from cdi_audit.verdict.screening import (
    DuplicateGroup,
    NearDuplicate,
    Screen,
)

TEST_DESCRIPTIONS = {
    "permutation": "permutation test of the Welch statistic on cross-fitted (5-fold) logistic-regression "
    "scores, one-sided, suspect > reference",
    "split": "single stratified split: logistic regression fitted on one half, one-sided Welch t-test "
    "suspect > reference on the held-out half",
}

VERSIONED_PACKAGES = ("cdi-audit", "torch", "diffusers", "numpy", "scipy", "scikit-learn", "pillow")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


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


def audit_result(settings: AuditSettings, inputs: ScreenedInputs, extracted: ModelFeatures, decision: Decision,
                 shift: ShiftCheck, control_model: ControlModelResult | None,
                 timings: dict[str, float]) -> AuditResult:
    """The ``AuditResult`` (report.json) of a finished audit: the decision, what it rests on, and what was read."""
    suspect, reference = extracted.image_sets
    summary, target = extracted.summary, extracted.target
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
