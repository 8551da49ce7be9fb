"""One evaluation, stage by stage: known members and non-members -> features -> power curves -> EvaluationResult.

Features are extracted once per image (through the cache); every simulated
audit then reuses them, so the cost of the curves is statistics only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from cdi_audit.console import StageProgress, timed
from cdi_audit.features.base import Extractor
from cdi_audit.features.catalogue import PRESETS
from cdi_audit.features.registry import extractor_names
from cdi_audit.features.table import CALIBRATED_SUFFIX, calibrated
from cdi_audit.inputs.images import scan_image_set
from cdi_audit.pipeline.inputs import require_enough
from cdi_audit.pipeline.model_features import load_and_extract, on_model
from cdi_audit.pipeline.result import TEST_DESCRIPTIONS, package_versions, public_configuration
from cdi_audit.pipeline.settings import ModelSettings, check_evaluation
from cdi_audit.results.schema import (
    EvaluationResult,
    ImagesNeededResult,
    SkippedFileInfo,
)
from cdi_audit.statistics.evaluation import (
    EVALUATION_TESTS,
    NEEDED_P,
    Draw,
    curve_points,
    discrimination,
    draw_p_values,
    draws,
    false_positives,
    images_needed,
    sample_size_grid,
)
from cdi_audit.statistics.testing import AnyTestName
from cdi_audit.verdict.screening import reject_overlap

EVALUATION_ROLES = ("members", "non-members")
TEST_NOTES = {
    **{test: f"ours: {description}" for test, description in TEST_DESCRIPTIONS.items()},
    "cdi-reference": "the CDI paper's rule: two-sided Welch t-test on pooled cross-fitted scores; NOT calibrated "
    "(rejects more often than alpha under H0), shown only for comparison",
}


@dataclass(frozen=True, kw_only=True)
class EvaluationSettings(ModelSettings):
    members_dir: Path
    nonmembers_dir: Path
    features: str = "full"
    alpha: float = 0.01
    repeats: int = 50
    permutations: int = 200
    tests: tuple[AnyTestName, ...] = EVALUATION_TESTS

    def __post_init__(self) -> None:
        super().__post_init__()
        check_evaluation(self.alpha, self.repeats, self.permutations, self.tests, NEEDED_P)


def evaluated_feature_sets(spec: str, extractors: list[Extractor], conditioning: str) -> dict[str, list[str]]:
    """Feature sets to compare, name -> columns.

    Each preset the extracted features cover (as the preset is on this model),
    the user's own list when it is not a preset, and each extractor alone unless a
    preset is that extractor alone (``blackbox`` is ``rediffuse``).
    """
    columns = {extractor.name: list(extractor.columns) for extractor in extractors}
    sets = {}
    for preset in PRESETS:
        members = extractor_names(preset, conditioning)
        if set(members) <= set(columns):
            sets[preset] = [c for name in members for c in columns[name]]
    if len(columns) > 1 and list(columns) not in [extractor_names(p, conditioning) for p in sets]:
        sets[spec.replace(" ", "")] = [c for name in columns for c in columns[name]]
    sets.update({name: cols for name, cols in columns.items() if cols not in sets.values()})
    return sets


def simulate_audits(
    matrix: np.ndarray,
    work: list[Draw],
    feature_sets: dict[str, list[int]],
    tests: tuple[AnyTestName, ...],
    permutations: int,
    n_jobs: int,
    on_progress: Callable[[int, int], None] | None,
) -> list[tuple[Draw, dict[tuple[str, str], float]]]:
    """p-values of every (feature set, test) on every draw, in parallel over draws (one core per draw)."""
    results = []
    tasks = (delayed(draw_p_values)(matrix, draw, feature_sets, tests, permutations) for draw in work)
    for draw, p_values in zip(work, Parallel(n_jobs=n_jobs, return_as="generator")(tasks), strict=True):
        results.append((draw, p_values))
        if on_progress is not None:
            on_progress(len(results), len(work))
    return results


def _grid_warnings(sizes: dict[str, list[int]]) -> list[str]:
    largest = sizes["members"][-1]
    if largest >= 100:
        return []
    return [f"The members curve stops at n = {largest}: with fewer than 100 members and non-members, "
            "'images needed' is often beyond what these folders can show."]


def run_evaluation(settings: EvaluationSettings, progress: StageProgress | None = None) -> EvaluationResult:
    """Measure detection power on known members. Raises ``AuditError`` subclasses for unusable inputs."""
    progress = progress or StageProgress()
    timings: dict[str, float] = {}
    with timed(timings, "scan"):
        members = scan_image_set(settings.members_dir, settings.strict, progress.track("hashing members"))
        nonmembers = scan_image_set(settings.nonmembers_dir, settings.strict, progress.track("hashing non-members"))
        require_enough(members, "members")
        # The null curve draws two disjoint sets of at least 10 non-members.
        require_enough(nonmembers, "non-members", needed=20)
        reject_overlap(members, nonmembers, "a training member cannot also be a non-member")
    extracted = load_and_extract(settings, [members, nonmembers], progress, timings, set_roles=EVALUATION_ROLES)
    table = extracted.table
    members, nonmembers = extracted.image_sets
    sets = evaluated_feature_sets(settings.features, extracted.extractors, extracted.target.conditioning)
    if settings.calibrated:  # as check does: the features and how much the adapters changed each of them
        base = load_and_extract(on_model(settings, settings.model.base, extracted.extractors), [members, nonmembers],
                                progress, timings, "base_", set_roles=EVALUATION_ROLES)
        table = calibrated(table, base.table)
        sets = {name: [*columns, *(column + CALIBRATED_SUFFIX for column in columns)]
                for name, columns in sets.items()}
    matrix = table.scoring_matrix([*members.keys, *nonmembers.keys])
    is_member = np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]
    set_indices = {name: [table.columns.index(c) for c in columns] for name, columns in sets.items()}

    with timed(timings, "discrimination"):
        separation = [
            discrimination(matrix[:, indices], is_member, name, sets[name], settings.seed)
            for name, indices in set_indices.items()
        ]
    member_rows, nonmember_rows = np.flatnonzero(is_member), np.flatnonzero(~is_member)
    sizes = {"members": sample_size_grid(min(len(members), len(nonmembers))),
             "null": sample_size_grid(len(nonmembers) // 2)}
    work = [draw for kind, grid in sizes.items()
            for draw in draws(kind, grid, settings.repeats, member_rows, nonmember_rows, settings.seed)]
    with timed(timings, "curves"):
        results = simulate_audits(matrix, work, set_indices, settings.tests, settings.permutations,
                                  settings.n_jobs, progress.counter("simulated audits"))
    points = curve_points(results, settings.alpha)
    pairs = [(name, test) for name in sets for test in settings.tests]
    return EvaluationResult(
        n_members=len(members),
        n_nonmembers=len(nonmembers),
        members_dir=str(settings.members_dir),
        nonmembers_dir=str(settings.nonmembers_dir),
        model=extracted.target.description,
        calibration="base" if settings.calibrated else None,
        alpha=settings.alpha,
        repeats=settings.repeats,
        permutations=settings.permutations,
        seed=settings.seed,
        tests=list(settings.tests),
        test_notes={test: TEST_NOTES[test] for test in settings.tests},
        feature_sets=sets,
        discrimination=separation,
        images_needed=[
            ImagesNeededResult(feature_set=name, test=test, images_needed=images_needed(points, name, test),
                               largest_n_tried=sizes["members"][-1])
            for name, test in pairs
        ],
        false_positive_rates=[
            false_positives(points, name, test, settings.alpha)
            for name, test in pairs
        ],
        curves=points,
        skipped_files=[
            SkippedFileInfo(path=item.path, reason=item.reason, image_set=role)
            for images, role in ((members, "members"), (nonmembers, "nonmembers"))
            for item in images.skipped
        ],
        warnings=_grid_warnings(sizes) + extracted.notes,
        extraction=extracted.summary,
        timings_seconds=timings,
        versions=package_versions(),
        configuration=public_configuration(settings),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
