"""From a feature table to a verdict, without the model: the test, the effect, the negative control, the
curve and the diagnostics, and the rules that let a failed control block ``evidence``.

Kept apart from ``audit.py`` (which does the I/O and the model work) so the statistics can be rerun and
tested from saved features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cdi_audit.console import StageProgress
from cdi_audit.features.table import FeatureTable
from cdi_audit.results.schema import DroppedFeature, Effect, FeatureDiagnosticRow, SampleSizeCurvePoint, Verdict
from cdi_audit.statistics.diagnostics import feature_diagnostics
from cdi_audit.statistics.power import DEFAULT_CURVE_RESAMPLES, sample_size_curve
from cdi_audit.statistics.testing import TestName, TestOutcome, effect_size, run_test
from cdi_audit.verdict.controls import ShiftCheck, negative_control


@dataclass(frozen=True)
class Decision:
    """The statistics of one audit: the verdict and everything it rests on."""

    verdict: Verdict
    reason: str
    used_columns: tuple[str, ...]
    dropped: tuple[DroppedFeature, ...]
    outcome: TestOutcome | None = None
    effect: Effect | None = None
    negative_control: TestOutcome | None = None
    curve: tuple[SampleSizeCurvePoint, ...] = ()
    diagnostics: tuple[FeatureDiagnosticRow, ...] = ()


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
    calibrated: bool = False,
) -> Decision:
    """Test whether the model scores the suspect images as more member-like than the reference images
    (``calibrated``: whether the table's per-image changes an adapter made set the suspect images apart).

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
    elif outcome.p_value < alpha and calibrated:
        verdict, reason = "evidence", (
            f"The adapter changes the suspect images' features, relative to its base, differently from the "
            f"reference images' (p = {outcome.p_value:.3g} < alpha = {alpha}): evidence that they were used in "
            "training the adapter."
        )
    elif outcome.p_value < alpha:
        verdict, reason = "evidence", (
            f"The model scores the suspect images as more member-like than the reference images "
            f"(p = {outcome.p_value:.3g} < alpha = {alpha}): evidence that they were used in training."
        )
    else:
        what = "in how the adapter changes the features of" if calibrated else "between"
        verdict, reason = "no_evidence", (
            f"No significant difference {what} suspect and reference images (p = {outcome.p_value:.3g} "
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
