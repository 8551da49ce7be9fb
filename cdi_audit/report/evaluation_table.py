"""The tables a person reads at the end of ``cdi-audit evaluate`` (stderr, Rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cdi_audit.console import shown
from cdi_audit.report.facts import interval_text
from cdi_audit.results.schema import EvaluationResult

SHORT_TEST_NAMES = {"permutation": "perm", "split": "split", "cdi-reference": "cdi-ref"}


def separation_table(result: EvaluationResult) -> Table:
    """How well each feature set tells all members from all non-members (cross-fitted scores)."""
    table = Table(title=f"Separation: {result.n_members} members vs {result.n_nonmembers} non-members",
                  title_justify="left")
    for header in ("feature set", "cols", "AUC (95% CI)", "TPR at 1% FPR (95% CI)"):
        table.add_column(header, justify="right" if header == "cols" else "left")
    for row in result.discrimination:
        table.add_row(row.feature_set, str(len(row.columns)),
                      f"{row.auc:.3f} ({interval_text(*row.auc_ci)})",
                      f"{row.tpr_at_1pct_fpr:.3f} ({interval_text(*row.tpr_at_1pct_fpr_ci)})")
    return table


def power_table(result: EvaluationResult) -> Table:
    """Images needed per test, and each test's false-positive rate on the null draws."""
    needed = {(row.feature_set, row.test): row for row in result.images_needed}
    false_positive = {(row.feature_set, row.test): row for row in result.false_positive_rates}
    table = Table(title="Images needed (median p < 0.01) and false-positive rate", title_justify="left")
    table.add_column("feature set", no_wrap=True)
    for test in result.tests:
        table.add_column(f"needed\n{SHORT_TEST_NAMES[test]}", justify="right")
    for test in result.tests:
        table.add_column(f"FPR\n{SHORT_TEST_NAMES[test]}", justify="right")
    for name in result.feature_sets:
        images = []
        for test in result.tests:
            entry = needed[(name, test)]
            images.append(str(entry.images_needed) if entry.images_needed else f">{entry.largest_n_tried}")
        rates = [f"{false_positive[(name, test)].rate:.1%}" for test in result.tests]
        table.add_row(name, *images, *rates)
    return table


def print_evaluation(result: EvaluationResult, console: Console) -> None:
    console.print()
    console.print(separation_table(result))
    console.print(power_table(result))
    console.print(
        f"[dim]needed: smallest n (per set, n vs n) whose median p over {result.repeats} draws is below 0.01. "
        f"FPR: share of null draws (non-members vs non-members) with p < {result.alpha:g}.[/]"
    )
    for test, note in result.test_notes.items():
        console.print(f"[dim]{SHORT_TEST_NAMES[test]}: {shown(note)}[/]")
    for warning in result.warnings:
        console.print(f"[yellow]warning[/] {shown(warning)}")
