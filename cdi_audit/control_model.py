"""The control model (protocol.md, Controls 3): the same audit on a model known not to have seen the suspect
images, for a fine-tune its base model.

Whatever the control model finds between the sets cannot come from training on the suspect images: it comes
from the images themselves (a difference between the sets that any model picks up), or the control did see
them after all. So the suspect model's finding counts as evidence only if the control model does not tell
the sets apart and the suspect model's effect (AUC of its scores) is larger than the control's.

protocol.md asks for "significant and larger than the control's". We read "larger" as larger beyond chance:
the paired bootstrap's one-sided lower bound of the AUC difference at the audit's alpha must be above 0. With
the point estimate alone, a difference between the sets that both models see got through as evidence in 12 of
40 simulated audits (64 per set, a shift the suspect model alone called evidence in 18 of 40); with the bound,
in 1 of 40. It costs power: a real effect the suspect model alone found in 33 of 40 audits is then found in 26.
We also require that the control model itself finds nothing (p >= alpha, negative control passed): a control
that separates the sets is a failed control, and a failed control must give ``inconclusive``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cdi_audit.decision import Decision
from cdi_audit.stats import TestOutcome, auc

DIFFERENCE_RESAMPLES = 2000


@dataclass(frozen=True)
class ControlComparison:
    """The control model's own test, and how the suspect model's effect compares with it.

    ``passed``: the control found nothing and, where the suspect's result is significant, the suspect's
    effect is larger beyond chance; None when the control model's scores were unusable (constant features, degenerate
    scores).
    """

    decision: Decision
    separates_sets: bool | None
    auc_difference: float | None  # suspect AUC minus control AUC
    # Two-sided interval at ``level`` = 1 - 2 alpha: its lower end is the one-sided bound the rule uses.
    auc_difference_ci: tuple[float, float] | None
    level: float
    passed: bool | None


def auc_difference_interval(
    first: TestOutcome, second: TestOutcome, seed: int, level: float = 0.95, resamples: int = DIFFERENCE_RESAMPLES
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of AUC(first) - AUC(second) when both scored the same images.

    Each resample draws suspect and reference images (with replacement, within their set) and takes both
    models' scores of the same draws, so the pairing of the two models on one image is kept; scipy's
    ``bootstrap(paired=True)`` cannot stratify by set. Descriptive, like the effect intervals: it ignores the
    dependence that cross-fitting creates between scores. None when the two outcomes scored different rows.
    """
    same_rows = (first.rows is None and second.rows is None) or (
        first.rows is not None and second.rows is not None and np.array_equal(first.rows, second.rows)
    )
    if not same_rows or not np.array_equal(first.is_suspect, second.is_suspect):
        return None
    rng = np.random.default_rng([seed, 3571])
    suspect_rows, reference_rows = np.flatnonzero(first.is_suspect), np.flatnonzero(~first.is_suspect)
    drawn_suspect = rng.choice(suspect_rows, (resamples, len(suspect_rows)))
    drawn_reference = rng.choice(reference_rows, (resamples, len(reference_rows)))
    differences = (auc(first.scores[drawn_suspect], first.scores[drawn_reference])
                   - auc(second.scores[drawn_suspect], second.scores[drawn_reference]))
    low, high = np.quantile(differences, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _usable(decision: Decision) -> bool:
    return decision.outcome is not None and not decision.outcome.degenerate and decision.effect is not None


def judge_with_control(suspect: Decision, control: Decision, alpha: float, seed: int,
                       control_name: str = "the control model") -> tuple[Decision, ControlComparison]:
    """The suspect model's decision after the control model's: ``evidence`` survives only a clean control
    with a smaller effect; every failure turns it into ``inconclusive``. A suspect result that is already
    inconclusive keeps its own reason (it came first)."""
    level = 1 - 2 * alpha
    if not _usable(control):
        comparison = ControlComparison(control, None, None, None, level, None)
        if suspect.verdict != "evidence":
            return suspect, comparison
        return replace(suspect, verdict="inconclusive", reason=(
            f"The suspect images score higher (p = {suspect.outcome.p_value:.3g}), but {control_name} gave no "
            f"usable scores ({control.reason.rstrip('.')}), so its effect cannot be compared; the result is not "
            "trusted.")), comparison

    control_p, control_auc = control.outcome.p_value, control.effect.auc
    separates = control_p < alpha
    control_negative_failed = control.negative_control is not None and control.negative_control.p_value < alpha
    difference = interval = None
    if _usable(suspect):
        difference = suspect.effect.auc - control_auc
        interval = auc_difference_interval(suspect.outcome, control.outcome, seed, level)
    larger = interval is not None and interval[0] > 0
    significant = suspect.verdict == "evidence"
    passed = not separates and not control_negative_failed and (larger or not significant)
    comparison = ControlComparison(control, separates, difference, interval, level, passed)

    if suspect.verdict == "inconclusive":
        return suspect, comparison
    if separates:
        reason = (
            f"{control_name.capitalize()}, which should not have seen the suspect images, also tells the sets "
            f"apart (p = {control_p:.3g} < {alpha}; AUC {control_auc:.3f}). The difference comes from the images "
            "themselves or the control saw them too, so it cannot be laid to the suspect model's training; the "
            "result is not trusted.")
    elif control_negative_failed:
        reason = (
            f"The negative control on {control_name} came out significant (p = "
            f"{control.negative_control.p_value:.3g} < {alpha}), which should not happen; the result is not trusted.")
    elif significant and not larger:
        bound = f", {level:.0%} interval {interval[0]:+.3f} to {interval[1]:+.3f}" if interval else ""
        reason = (
            f"The suspect images score higher on the suspect model (p = {suspect.outcome.p_value:.3g}, AUC "
            f"{suspect.effect.auc:.3f}), but not clearly more than on {control_name}, which never saw them (AUC "
            f"{control_auc:.3f}; difference {difference:+.3f}{bound}); the difference is not laid to training.")
    elif significant:
        return replace(suspect, reason=(
            f"{suspect.reason} {control_name.capitalize()}, which never saw them, shows no such difference (p = "
            f"{control_p:.3g}; AUC {control_auc:.3f} against the suspect model's {suspect.effect.auc:.3f}, "
            f"difference {difference:+.3f}, {level:.0%} interval {interval[0]:+.3f} to {interval[1]:+.3f}).")), \
            comparison
    else:
        return suspect, comparison
    return replace(suspect, verdict="inconclusive", reason=reason), comparison
