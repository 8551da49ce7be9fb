"""The facts of a result as worded sentences and (label, text) rows, written once for every format: the
document's sections (``content.py``) and the terminal summary (``terminal.py``) render these, so the PDF, the HTML
and the terminal say the same thing in the same words.

Every number comes from the ``AuditResult``; nothing is recomputed here. Plain text: each renderer escapes it
for its own format.
"""

from __future__ import annotations

from pathlib import Path

from cdi_audit.results.schema import AdapterInfo, AuditResult, ControlModelResult, Controls, TrainingClaims

ACCESS_LABELS = {
    "white": "white-box (weights and gradients)",
    "grey": "grey-box (noise predictions)",
    "black": "black-box (image-to-image calls only)",
}


def near_duplicates_text(control: Controls) -> str:
    """Copies of suspect pictures removed from the reference set, and groups within a set kept once."""
    removed = sum(item.first_role != item.second_role for item in control.near_duplicates)
    left_out = sum(len(group.left_out) for group in control.duplicate_groups)
    return (f"{removed} removed from the reference set, {len(control.duplicate_groups)} group(s) within a set, "
            f"{left_out} copies left out (one image per group is tested)")


def p_text(p: float) -> str:
    return f"{p:.3g}"


def interval(low: float, high: float) -> str:
    return f"95% CI {low:.3f} to {high:.3f}"


def control_model_status(control: ControlModelResult, alpha: float) -> str:
    """Whether the control model supports the verdict or why it blocks evidence, in a few words."""
    if control.passed is None:
        return "not usable: " + control.reason.rstrip(".")
    if control.negative_control_p_value is not None and control.negative_control_p_value < alpha:
        return "FAILED: its negative control is significant"
    if not control.passed:
        return "FAILED: the suspect model's effect is not clearly larger"
    return "passed; it also tells the sets apart" if control.separates_sets else "passed"


def control_label(result: AuditResult) -> str:
    """What the control model is called: an adapter audit's control is the adapters' base."""
    return "base model" if result.model.adapters else "control model"


def calibration_text(result: AuditResult) -> str | None:
    """How the features were scored, when not as they are: an adapter audit calibrated against its base."""
    if result.calibration != "base":
        return None
    return ("the adapted model's features and how much the adapter changed each of them: the adapted model's "
            "value minus the base's, image by image at the same noise (norms as log ratios), which removes each "
            "image's own difficulty; --no-calibration scores the features alone")


def control_model_numbers(control: ControlModelResult, result: AuditResult) -> str:
    """The control's p-value and AUC beside the suspect model's, and their difference with its interval."""
    if control.p_value is None or control.effect is None:
        return "no p-value or effect"
    text = f"p = {p_text(control.p_value)}, AUC {control.effect.auc:.3f}"
    if result.effect is not None:
        text += f" against the {'adapter' if result.model.adapters else 'suspect model'}'s {result.effect.auc:.3f}"
    if control.auc_difference is not None:
        text += f"; difference {control.auc_difference:+.3f}"
        if control.auc_difference_ci is not None:
            low, high = control.auc_difference_ci
            text += f" ({control.auc_difference_level:.0%} CI {low:+.3f} to {high:+.3f})"
    return text


def claim_rows(claims: TrainingClaims) -> tuple[tuple[str, str], ...]:
    """The header's training claims as label-value pairs (only those it has)."""
    rows = (("output name", claims.output_name), ("comment", claims.training_comment),
            ("dataset folders", "; ".join(claims.dataset_folders) or None),
            ("training images (repeats included)", None if claims.train_images is None else str(claims.train_images)),
            ("most frequent tags", ", ".join(claims.top_tags) or None), ("resolution", claims.resolution),
            ("base model", claims.base_model_name), ("base model hash", claims.base_model_hash),
            ("training started", claims.training_started), ("training finished", claims.training_finished))
    return tuple((label, value) for label, value in rows if value)


def adapter_text(adapter: AdapterInfo) -> str:
    """One adapter as the report names it: its file, its sha256 (abbreviated) and the scale it was fused at."""
    return f"{Path(adapter.path).name} (sha256 {adapter.sha256[:12]}…, scale {adapter.scale:g})"


def interval_text(low: float, high: float) -> str:
    return f"{low:.3f} to {high:.3f}"


def shift_text(result: AuditResult) -> str:
    """The shift check in one line: its p-value, and when it failed, the statistics that differ most."""
    control = result.controls
    text = f"p = {control.shift_p_value:.3g}  (" + ("passed" if control.shift_passed else
                                                     f"FAILED at {control.shift_alpha:g}") + ")"
    if not control.shift_passed:
        text += "; " + ", ".join(f"{item.name} {item.suspect_mean:.3g} vs {item.reference_mean:.3g}"
                                 for item in control.shift_statistics[:3])
    return text


def summary_rows(result: AuditResult) -> list[tuple[str, str]]:
    """The key numbers of an audit as (label, text) rows: what the terminal prints under the verdict."""
    rows: list[tuple[str, str]] = []
    if result.p_value is not None:
        detail = f"{result.test} test"
        if result.permutations_run is not None:
            detail += f", {result.permutations_run} permutations"
        rows.append(("p-value", f"{result.p_value:.4g}  ({detail})"))
    rows.append(("alpha", f"{result.alpha:g}"))
    rows.append(("images", f"{result.n_suspect} suspect, {result.n_reference} reference"))
    if result.effect is not None:
        effect = result.effect
        difference_ci = interval_text(*effect.mean_score_difference_ci)
        rows += [("AUC of scores", f"{effect.auc:.3f}  (95% CI {interval_text(*effect.auc_ci)})"),
                 ("mean score difference", f"{effect.mean_score_difference:+.3f}  (95% CI {difference_ci})"),
                 ("Cohen's d", f"{effect.cohens_d:+.2f}")]
    rows += control_rows(result)
    rows += sample_size_rows(result)
    rows.append(("features", f"{len(result.features)} columns" +
                 (f", {len(result.dropped_features)} dropped" if result.dropped_features else "") +
                 ("; half of them the change against the base, per image" if result.calibration else "")))
    rows += model_rows(result)
    if result.skipped_files:
        rows.append(("skipped files", f"{len(result.skipped_files)} (listed in the JSON report)"))
    return rows


def control_rows(result: AuditResult) -> list[tuple[str, str]]:
    """The negative control, the shift check, the control model and the near-duplicates, one row each."""
    control, rows = result.controls, []
    if control.negative_control_p_value is not None:
        status = "passed" if control.negative_control_passed else "FAILED"
        rows.append(("negative control", f"p = {control.negative_control_p_value:.3g}  ({status})"))
    if control.shift_p_value is not None:
        rows.append(("shift check", shift_text(result)))
    if control.control_model is not None:
        status = control_model_status(control.control_model, result.alpha)
        rows.append((control_label(result), f"{control_model_numbers(control.control_model, result)}  ({status})"))
    if control.near_duplicates:
        rows.append(("near-duplicates", near_duplicates_text(control)))
    return rows


def sample_size_rows(result: AuditResult) -> list[tuple[str, str]]:
    """Where the curve's median p reaches alpha, and the images needed for the target power."""
    rows = []
    curve = result.sample_size_curve
    if curve is not None and curve.points:
        reached = [point.n for point in curve.points if point.median_p < result.alpha]
        if not reached:
            needed = f"median p stays >= alpha up to {curve.points[-1].n} per set"
        elif min(reached) == curve.points[0].n:
            needed = f"median p < alpha already at {min(reached)} per set, the smallest size tried"
        else:
            needed = f"median p < alpha from {min(reached)} per set"
        rows.append(("images needed", f"{needed}  ({curve.test} test, {curve.points[0].resamples} resamples per "
                                      "size)"))
    if result.power is not None and result.power.images_per_set_from_effect is not None:
        power = result.power
        text = f"at least {power.images_per_set_from_effect} per set from the observed effect"
        if power.images_per_set_from_curve is not None:
            text += f", {power.images_per_set_from_curve} on the curve"
        rows.append((f"{power.target_power:.0%} power", text))
    return rows


def model_rows(result: AuditResult) -> list[tuple[str, str]]:
    """The model, its adapters and what their files claim, the access and the model calls."""
    model, rows = result.model, []
    if model.endpoint is not None:
        rows.append(("model", f"{model.endpoint}  ({model.family}; id {model.fingerprint[:12]}…)"))
    else:
        guidance = "" if model.guidance is None else f"; guidance {model.guidance:g}"
        rows.append(("model", f"{model.path}  ({model.family}; sha256 {model.fingerprint[:12]}…; "
                              f"{model.device}, {model.dtype}{guidance})"))
    for adapter in model.adapters:
        claims = claim_rows(adapter.claims) if adapter.claims is not None else (("training metadata", "none"),)
        rows += [("adapter", adapter_text(adapter)),
                 ("  the file says", "; ".join(f"{label}: {value}" for label, value in claims) +
                  " (unverified; not used by the test)")]
    rows.append(("access", ACCESS_LABELS.get(model.access, model.access)))
    extraction = result.extraction
    calls = "image-to-image calls" if model.access == "black" else "model calls"
    rows.append((calls, f"{extraction.model_calls}  ({extraction.images_from_cache} of {extraction.images} images "
                        f"from cache, {extraction.seconds:.1f} s)"))
    return rows
