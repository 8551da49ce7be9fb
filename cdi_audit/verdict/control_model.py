"""The control model (docs/control-model.md): the same audit on a model known not to have seen the suspect
images, for a fine-tune its base model.

Whatever the control model finds between the sets cannot come from training on the suspect images: it comes
from the images themselves (a difference between the sets that any model picks up), or the control did see
them after all. So the suspect model's finding counts as evidence only if its effect (the AUC of its scores)
is larger than the control's.

Evidence asks for an effect "significant and larger than the control's". We read "larger" as larger beyond chance:
the lower end of a paired bootstrap interval of the AUC difference at level 1 - 2 alpha (the one-sided bound
at alpha) must be above 0. Measured on 60 simulated audits per setting (64 images per set, permutation test,
alpha 0.01), where both models see the same difference between the sets (shifts the suspect model alone
called evidence in 24, 48 and 59 of 60): the point estimate let 18, 26 and 25 through as evidence, the bound
1, 1 and 1. The price is power: real effects the suspect model alone found in 24 and 48 of 60 audits were
found in 15 and 37 beside a clean control.

A control that itself tells the sets apart does not block evidence on its own (a fine-tune's base model may
have seen published images, or the sets may differ a little): the suspect model must then go beyond it, and
the report says so. A failed negative control on the control model, or unusable control scores, give
``inconclusive``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cdi_audit.results.verdict import Verdict
from cdi_audit.statistics.testing import TestOutcome, auc
from cdi_audit.verdict.decision import Decision, demote

DIFFERENCE_RESAMPLES = 2000


@dataclass(frozen=True)
class ControlComparison:
    """The control model's own test, and how the suspect model's effect compares with it.

    ``passed``: the control's negative control passed and, where the suspect's result is significant, the
    suspect's effect is larger beyond chance; None when the control model's scores were unusable (constant
    features, degenerate scores).
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
                       against_base: bool = False) -> tuple[Decision, ControlComparison]:
    """The suspect model's decision after the control model's: ``evidence`` survives only if the suspect
    model's effect is larger than the control's beyond chance; an unusable control or a failed negative
    control on it gives ``inconclusive``. A suspect result that is already inconclusive keeps its own reason
    (it came first). ``against_base``: the control is an adapter's base, and the suspect is the adapter (its
    features, or how it changed them)."""
    level = 1 - 2 * alpha
    significant = suspect.verdict == Verdict.EVIDENCE
    control_name, suspect_name = ("the base model", "the adapter") if against_base else \
        ("the control model", "the suspect model")
    if not _usable(control):
        comparison = ControlComparison(control, None, None, None, level, None)
        if not significant:
            return suspect, comparison
        return demote(suspect, (
            f"The suspect images score higher (p = {suspect.outcome.p_value:.3g}), but {control_name} gave no "
            f"usable scores ({control.reason.rstrip('.')}), so its effect cannot be compared; the result is not "
            "trusted.")), comparison

    control_p, control_auc = control.outcome.p_value, control.effect.auc
    separates = control_p < alpha
    negative_failed = control.negative_control is not None and control.negative_control.p_value < alpha
    difference = interval = None
    if _usable(suspect):
        difference = suspect.effect.auc - control_auc
        interval = auc_difference_interval(suspect.outcome, control.outcome, seed, level)
    larger = interval is not None and interval[0] > 0
    comparison = ControlComparison(control, separates, difference, interval, level,
                                   not negative_failed and (larger or not significant))
    found = (f"{control_name} {'also tells the sets apart' if separates else 'shows no significant difference'} "
             f"(p = {control_p:.3g}; AUC {control_auc:.3f})")
    compared = "" if interval is None else (
        f"difference in AUC {difference:+.3f}, {level:.0%} interval {interval[0]:+.3f} to {interval[1]:+.3f}")
    why_not = (" A base that saw the suspect images makes even an adapter trained on other images change them "
               "differently from unseen ones, so only an effect beyond the base's own counts.") if against_base else ""

    if suspect.verdict == Verdict.INCONCLUSIVE:
        return suspect, comparison
    if negative_failed:
        return demote(suspect, (
            f"The negative control on {control_name} came out significant (p = "
            f"{control.negative_control.p_value:.3g} < {alpha}), which should not happen; the result is not "
            "trusted.")), comparison
    if significant and not larger:
        return demote(suspect, (
            f"The suspect images stand out on {suspect_name} (p = {suspect.outcome.p_value:.3g}, AUC "
            f"{suspect.effect.auc:.3f}), but not clearly more than on {control_name}, which should not have seen "
            f"them: {found}; {compared or 'the two cannot be compared'}. The difference is not laid to "
            f"{suspect_name}'s training.{why_not}")), comparison
    if significant:
        note = (f" {control_name.capitalize()}'s own difference comes from the images themselves or from having "
                f"seen them; {suspect_name}'s is beyond it.") if separates else ""
        return replace(suspect, reason=(
            f"{suspect.reason} Beside it, {found}; {suspect_name}'s AUC is {suspect.effect.auc:.3f}, "
            f"{compared}.{note}")), comparison
    if separates:
        return replace(suspect, reason=(
            f"{suspect.reason} Note: {found}, although it should not have seen the suspect images: either it did, "
            "or the sets differ in a way any model picks up, and the reference set may not be a fair one.")), \
            comparison
    return suspect, comparison
