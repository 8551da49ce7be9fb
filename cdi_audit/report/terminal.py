"""The short summary a person reads at the end of an audit (stderr, Rich)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from cdi_audit.console import shown
from cdi_audit.report.facts import summary_rows
from cdi_audit.results.schema import CORRECTION_NAMES, AuditResult, BatchResult


def summary_table(result: AuditResult) -> Table:
    """The key numbers (``facts.summary_rows``) as a two-column table, escaped for the console."""
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    for label, text in summary_rows(result):
        table.add_row(label, shown(text))
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
