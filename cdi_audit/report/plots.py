"""The figure of ``cdi-audit evaluate`` (matplotlib, Agg); never recomputes a number."""

from __future__ import annotations

from pathlib import Path

from cdi_audit.features.catalogue import PRESETS
from cdi_audit.report.figures import figure_png, pyplot
from cdi_audit.results.schema import EvaluationResult
from cdi_audit.statistics.evaluation import NEEDED_P

# Medians below this are drawn at it, so the permutation test's floor 1/(B+1) stays readable
# next to the parametric tests' p-values, which go far lower.
PLOT_FLOOR = 1e-5
TEST_COLOURS = {"permutation": "tab:blue", "split": "tab:green", "cdi-reference": "tab:red"}


def plot_p_value_curves(result: EvaluationResult, path: Path) -> Path:
    """Median p-value against n, one panel per preset (or per feature set when no preset was evaluated).

    Solid lines: P drawn from members; dashed: the null run (P from non-members).
    """
    plt = pyplot()
    panels = [name for name in result.feature_sets if name in PRESETS] or list(result.feature_sets)
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False, sharey=True)
    for axis, feature_set in zip(axes[0], panels, strict=True):
        for test in result.tests:
            for kind, style in (("members", "-"), ("null", "--")):
                points = sorted((p.n, p.median_p) for p in result.curves
                                if (p.feature_set, p.test, p.kind) == (feature_set, test, kind))
                if points:
                    sizes, medians = zip(*points, strict=True)
                    axis.plot(sizes, [max(m, PLOT_FLOOR) for m in medians], style, marker="o", markersize=3,
                              color=TEST_COLOURS[test], label=f"{test} ({kind})")
        axis.axhline(result.alpha, color="grey", linewidth=0.8, linestyle=":", label=f"alpha = {result.alpha:g}")
        if result.alpha != NEEDED_P:
            axis.axhline(NEEDED_P, color="black", linewidth=0.8, linestyle=":", label="p = 0.01")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_ylim(PLOT_FLOOR / 2, 1.5)
        axis.set_title(f"{feature_set} ({len(result.feature_sets[feature_set])} columns)")
        axis.set_xlabel("images per set (n vs n)")
    axes[0][0].set_ylabel(f"median p-value over {result.repeats} draws (floored at {PLOT_FLOOR:g})")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path.write_bytes(figure_png(figure, dpi=120))
    return path
