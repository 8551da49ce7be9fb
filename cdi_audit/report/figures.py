"""Figures of an audit report, rendered from the result (matplotlib, Agg: no display needed); they never
recompute a number. PNGs are written without a software stamp, so the same result gives the same bytes.
Torch-free: ``cdi-audit report`` draws them without the model.
"""

from __future__ import annotations

import io

from cdi_audit.results.schema import AuditResult

ROLE_COLOURS = {"suspect": "tab:red", "reference": "tab:blue"}
ROLE_LABELS = {"suspect": "suspect (published)", "reference": "reference (unpublished)"}


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported late: it is slow to import and needs no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(figure, dpi: int = 150) -> bytes:
    """The figure as PNG bytes (closed afterwards); no metadata, so identical figures give identical bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    pyplot().close(figure)
    return buffer.getvalue()


def sample_size_plot(result: AuditResult) -> bytes | None:
    """Median p-value (left) and share of p-values below alpha (right) against images per set."""
    curve = result.sample_size_curve
    if curve is None or not curve.points:
        return None
    plt = pyplot()
    sizes = [point.n for point in curve.points]
    medians = [max(point.median_p, 1e-300) for point in curve.points]
    figure, (p_axis, share_axis) = plt.subplots(1, 2, figsize=(9, 3.6))
    p_axis.plot(sizes, medians, "-o", color="tab:purple", markersize=4, label=f"median {curve.test}-test p")
    p_axis.axhline(result.alpha, color="black", linestyle="--", linewidth=0.9, label=f"alpha = {result.alpha:g}")
    if result.p_value is not None:
        p_axis.plot([max(sizes)], [max(result.p_value, 1e-300)], "*", color="tab:red", markersize=11,
                    label=f"this audit: {result.test} test, {result.n_suspect} vs {result.n_reference}")
    p_axis.set_yscale("log")
    p_axis.set_ylim(top=1.5)
    p_axis.set_xlabel("images per set (n suspect vs n reference)")
    p_axis.set_ylabel("p-value")
    p_axis.legend(fontsize=7)
    share_axis.plot(sizes, [point.fraction_below_alpha for point in curve.points], "-o", color="tab:purple",
                    markersize=4)
    share_axis.axhline(0.8, color="grey", linestyle=":", linewidth=0.9, label="80%")
    share_axis.set_ylim(-0.03, 1.03)
    share_axis.set_xlabel("images per set (n suspect vs n reference)")
    share_axis.set_ylabel(f"share of resamples with p < {result.alpha:g}")
    share_axis.legend(fontsize=7)
    for axis in (p_axis, share_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure_png(figure)


def score_histograms_plot(result: AuditResult) -> bytes | None:
    """Histograms of the scores the test used (out-of-fold, or the held-out half), suspect over reference."""
    scored = {role: [image.score for image in result.images if image.role == role and image.score is not None]
              for role in ROLE_COLOURS}
    if not all(scored.values()):
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(9, 3.2))
    bins = [index / 25 for index in range(26)]  # scores are probabilities in [0, 1]
    for role, scores in scored.items():
        axis.hist(scores, bins=bins, color=ROLE_COLOURS[role], alpha=0.45, edgecolor=ROLE_COLOURS[role],
                  label=f"{ROLE_LABELS[role]}, {len(scores)} images")
    axis.set_xlim(0, 1)
    axis.set_xlabel("score (scoring model's probability of 'suspect'; higher = more member-like)")
    axis.set_ylabel("images")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure_png(figure)
