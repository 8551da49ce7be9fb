"""From a feature table to a verdict, without the model: the test, the effect, the negative control, the
curve and the diagnostics, and the rules that let a failed control block ``evidence``.

Every rule that sets or changes a verdict is here: ``decide`` sets it, ``demote`` makes it inconclusive when a
later control fails (the control model's), ``after_correction`` applies a batch's multiple-testing correction.

Kept apart from ``audit.py`` (which does the I/O and the model work) so the statistics can be rerun and
tested from saved features.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cdi_audit.console import StageProgress
from cdi_audit.features.table import FeatureTable
from cdi_audit.results.schema import (
    CORRECTION_NAMES,
    DroppedFeature,
    Effect,
    FeatureDiagnosticRow,
    SampleSizeCurvePoint,
)
from cdi_audit.results.verdict import Verdict
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
    *,
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
    ``inconclusive``, never ``evidence``. The settings are keyword-only: nine of them in a row, several of one
    type, are easily passed in the wrong order.
    """
    progress = progress or StageProgress()
    matrix = table.scoring_matrix([*suspect_hashes, *reference_hashes])
    is_suspect = np.r_[np.ones(len(suspect_hashes), bool), np.zeros(len(reference_hashes), bool)]
    keep, dropped = _usable_columns(table, matrix)
    used = tuple(table.columns[i] for i in keep)
    if not keep:
        return Decision(Verdict.INCONCLUSIVE, "Every feature was constant across the images, so nothing can be tested.",
                        used, tuple(dropped))
    matrix = matrix[:, keep]
    outcome = run_test(test, matrix, is_suspect, seed, permutations, n_jobs, progress.counter("permutation test"))
    if outcome.degenerate:
        return Decision(Verdict.INCONCLUSIVE,
                        "The scoring model gave every image the same score; the test is undefined.",
                        used, tuple(dropped), outcome)
    effect = effect_size(outcome.scores, outcome.is_suspect, seed)
    control = negative_control(matrix[~is_suspect], test, seed, permutations, n_jobs,
                               progress.counter("negative control"))
    curve = tuple(sample_size_curve(matrix, is_suspect, alpha, seed, curve_resamples)) if curve_resamples else ()
    diagnostics = tuple(feature_diagnostics(matrix, is_suspect, used, seed))
    if shift is not None and not shift.passed:
        verdict, reason = Verdict.INCONCLUSIVE, shift_reason(shift, outcome.p_value)
    elif control.p_value < alpha:
        verdict, reason = Verdict.INCONCLUSIVE, (
            f"The negative control (two random halves of the reference set) came out significant "
            f"(p = {control.p_value:.3g} < {alpha}), which should not happen; the result is not trusted."
        )
    elif outcome.p_value < alpha and calibrated:
        verdict, reason = Verdict.EVIDENCE, (
            f"The adapter changes the suspect images' features, relative to its base, differently from the "
            f"reference images' (p = {outcome.p_value:.3g} < alpha = {alpha}): evidence that they were used in "
            "training the adapter."
        )
    elif outcome.p_value < alpha:
        verdict, reason = Verdict.EVIDENCE, (
            f"The model scores the suspect images as more member-like than the reference images "
            f"(p = {outcome.p_value:.3g} < alpha = {alpha}): evidence that they were used in training."
        )
    else:
        what = "in how the adapter changes the features of" if calibrated else "between"
        verdict, reason = Verdict.NO_EVIDENCE, (
            f"No significant difference {what} suspect and reference images (p = {outcome.p_value:.3g} "
            f">= alpha = {alpha}); this does not prove the images were not used."
        )
    return Decision(verdict, reason, used, tuple(dropped), outcome, effect, control, curve, diagnostics)


def demote(decision: Decision, reason: str) -> Decision:
    """``decision`` made inconclusive for ``reason``, its statistics kept: a control that fails after the test
    (the control model's) leaves no result to trust, and must not turn evidence into no evidence."""
    return replace(decision, verdict=Verdict.INCONCLUSIVE, reason=reason)


def after_correction(verdict: Verdict, reason: str, *, p_value: float, adjusted_p_value: float, alpha: float,
                     correction: str, family_size: int) -> tuple[Verdict, str]:
    """The verdict and reason of one audit of a batch after its p-value was adjusted over the batch's
    ``family_size`` audits (``correction``: "bh", "holm" or "none"): the adjusted p-value decides between
    evidence and no evidence; an inconclusive audit stays inconclusive, whatever its adjusted p-value."""
    correction_text = f"{CORRECTION_NAMES[correction]} correction over {family_size} audits"
    if verdict == Verdict.EVIDENCE and adjusted_p_value >= alpha:
        return Verdict.NO_EVIDENCE, (
            f"Significant alone (p = {p_value:.3g}), but not after the {correction_text} (adjusted p = "
            f"{adjusted_p_value:.3g} >= alpha = {alpha}): no evidence at the batch's level. Alone: {reason}")
    if verdict == Verdict.EVIDENCE and correction != "none":
        return verdict, (f"{reason} It stays significant after the {correction_text} (adjusted p = "
                         f"{adjusted_p_value:.3g}).")
    return verdict, reason


def shift_reason(shift: ShiftCheck, membership_p: float) -> str:
    differences = ", ".join(f"{item.name} (suspect mean {item.suspect_mean:.3g}, reference {item.reference_mean:.3g})"
                            for item in shift.most_different[:3])
    return (f"The suspect and reference images can be told apart without the model (shift check p = "
            f"{shift.p_value:.3g} < {shift.alpha:g}; most different: {differences}). The model-based difference "
            f"(p = {membership_p:.3g}) could come from that, not from training, so it is not trusted; use "
            "reference images from the same source as the suspect images.")
