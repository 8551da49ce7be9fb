"""The short summary a person reads at the end of an audit (stderr, Rich)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from cdi_audit.console import shown
from cdi_audit.report.content import (
    ACCESS_LABELS,
    adapter_text,
    claim_rows,
    control_label,
    control_model_numbers,
    control_model_status,
    near_duplicates_text,
)
from cdi_audit.results.schema import CORRECTION_NAMES, AuditResult, BatchResult


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


def summary_table(result: AuditResult) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    if result.p_value is not None:
        detail = f"{result.test} test"
        if result.permutations_run is not None:
            detail += f", {result.permutations_run} permutations"
        table.add_row("p-value", f"{result.p_value:.4g}  ({detail})")
    table.add_row("alpha", f"{result.alpha:g}")
    table.add_row("images", f"{result.n_suspect} suspect, {result.n_reference} reference")
    if result.effect is not None:
        effect = result.effect
        table.add_row("AUC of scores", f"{effect.auc:.3f}  (95% CI {interval_text(*effect.auc_ci)})")
        difference_ci = interval_text(*effect.mean_score_difference_ci)
        table.add_row("mean score difference", f"{effect.mean_score_difference:+.3f}  (95% CI {difference_ci})")
        table.add_row("Cohen's d", f"{effect.cohens_d:+.2f}")
    control = result.controls
    if control.negative_control_p_value is not None:
        status = "passed" if control.negative_control_passed else "FAILED"
        table.add_row("negative control", f"p = {control.negative_control_p_value:.3g}  ({status})")
    if control.shift_p_value is not None:
        table.add_row("shift check", shift_text(result))
    if control.control_model is not None:
        status = control_model_status(control.control_model, result.alpha)
        table.add_row(control_label(result),
                      f"{shown(control_model_numbers(control.control_model, result))}  ({status})")
    if control.near_duplicates:
        table.add_row("near-duplicates", near_duplicates_text(control))
    curve = result.sample_size_curve
    if curve is not None and curve.points:
        reached = [point.n for point in curve.points if point.median_p < result.alpha]
        if not reached:
            needed = f"median p stays >= alpha up to {curve.points[-1].n} per set"
        elif min(reached) == curve.points[0].n:
            needed = f"median p < alpha already at {min(reached)} per set, the smallest size tried"
        else:
            needed = f"median p < alpha from {min(reached)} per set"
        table.add_row("images needed", f"{needed}  ({curve.test} test, {curve.points[0].resamples} resamples per size)")
    if result.power is not None and result.power.images_per_set_from_effect is not None:
        power = result.power
        text = f"at least {power.images_per_set_from_effect} per set from the observed effect"
        if power.images_per_set_from_curve is not None:
            text += f", {power.images_per_set_from_curve} on the curve"
        table.add_row(f"{power.target_power:.0%} power", text)
    table.add_row("features", f"{len(result.features)} columns" +
                  (f", {len(result.dropped_features)} dropped" if result.dropped_features else "") +
                  ("; half of them the change against the base, per image" if result.calibration else ""))
    model = result.model
    if model.endpoint is not None:
        table.add_row("model", f"{shown(model.endpoint)}  ({model.family}; id {model.fingerprint[:12]}…)")
    else:
        guidance = "" if model.guidance is None else f"; guidance {model.guidance:g}"
        table.add_row("model", f"{shown(model.path)}  ({model.family}; sha256 {model.fingerprint[:12]}…; "
                               f"{model.device}, {model.dtype}{guidance})")
    for adapter in model.adapters:
        table.add_row("adapter", shown(adapter_text(adapter)))
        claims = claim_rows(adapter.claims) if adapter.claims is not None else (("training metadata", "none"),)
        table.add_row("  the file says", shown("; ".join(f"{label}: {value}" for label, value in claims)) +
                      " (unverified; not used by the test)")
    table.add_row("access", ACCESS_LABELS.get(model.access, model.access))
    extraction = result.extraction
    calls = "image-to-image calls" if model.access == "black" else "model calls"
    table.add_row(calls, f"{extraction.model_calls}  ({extraction.images_from_cache} of "
                         f"{extraction.images} images from cache, {extraction.seconds:.1f} s)")
    if result.skipped_files:
        table.add_row("skipped files", f"{len(result.skipped_files)} (listed in the JSON report)")
    return table


def print_summary(result: AuditResult, console: Console) -> None:
    label = f"[{result.verdict.style}]{result.verdict.label}[/]"
    console.print(f"\n{label}  {shown(result.verdict_reason)}")
    console.print(summary_table(result))
    listed = 10
    for skipped in result.skipped_files[:listed]:
        console.print(f"[dim]skipped[/] {shown(skipped.path)}: {shown(skipped.reason)}")
    if len(result.skipped_files) > listed:
        console.print(f"[dim]... and {len(result.skipped_files) - listed} more skipped files (see the JSON report)[/]")
    for warning in result.warnings:
        console.print(f"[yellow]warning[/] {shown(warning)}")


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def print_batch_summary(batch: BatchResult, console: Console) -> None:
    """One row per audit: its verdict after the correction, raw and adjusted p, the sets and the model."""
    correction = CORRECTION_NAMES[batch.correction]
    table = Table(title=f"{len(batch.audits)} audits; {correction} correction over {batch.family_size} p-values",
                  title_justify="left")
    for column in ("audit", "verdict", "p", "adjusted p", "images", "model"):
        table.add_column(column)
    for audit in batch.audits:
        result = audit.result
        if result is None:
            table.add_row(shown(audit.name), f"[bold red]ERROR (exit {audit.exit_code})[/]", "", "", "", "")
            continue
        model = result.model.endpoint or Path(result.model.path).name
        table.add_row(shown(audit.name), f"[{audit.verdict.style}]{audit.verdict.label}[/]",
                      _p(audit.p_value), _p(audit.adjusted_p_value), f"{result.n_suspect} vs {result.n_reference}",
                      shown(model))
    console.print(table)
    for audit in batch.audits:
        if audit.error is not None:
            console.print(f"[bold red]error[/] {shown(audit.name)}: {shown(audit.error)}")
    console.print(f"exit code {batch.exit_code}")
