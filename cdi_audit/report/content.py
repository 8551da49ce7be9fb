"""What a report says, in order, independent of the format: the HTML and PDF renderers lay out the same
``Document``, so a sentence is written once and both formats always agree.

Every number comes from the ``AuditResult`` (and the manifest); nothing is recomputed here.
Section order (docs/reports.md): verdict and key numbers, the p-value against sample size and the
score histograms, per-feature diagnostics, controls, method with citations, limitations, appendix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from cdi_audit.console import visible
from cdi_audit.evidence.summary import EvidenceSummary
from cdi_audit.features.catalogue import CATALOGUE, extractors_used
from cdi_audit.report.citations import references_for
from cdi_audit.report.facts import (
    ACCESS_LABELS,
    adapter_text,
    calibration_text,
    claim_rows,
    control_label,
    control_model_numbers,
    control_model_status,
    interval,
    near_duplicates_text,
    p_text,
)
from cdi_audit.results.manifest import Manifest
from cdi_audit.results.schema import (
    CORRECTION_NAMES,
    AuditResult,
    ModelInfo,
)

UNVERIFIED_TEXT = "UNVERIFIED: rendered with --force from a report.json that does not match its manifest ({reason})."


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Subheading:
    text: str


@dataclass(frozen=True)
class Facts:
    """Label-value pairs."""

    rows: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    widths: tuple[float, ...]  # relative column widths
    monospace: tuple[int, ...] = ()  # columns of hashes and numbers that read better aligned
    small: bool = False


@dataclass(frozen=True)
class Figure:
    """A PNG (``name`` is also its file name in the output folder) with a caption under it."""

    name: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


Block = Paragraph | Subheading | Facts | Table | Figure | Bullets


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]
    new_page: bool = False  # the PDF starts the section on a new page
    folded: bool = False  # the HTML shows it collapsed (long listings)


@dataclass(frozen=True)
class Document:
    title: str
    verdict: str
    verdict_label: str
    headline: str
    subtitle: str
    sections: tuple[Section, ...] = field(default_factory=tuple)
    unverified: str | None = None  # the line both formats show at the top of a --force rendering


@dataclass(frozen=True)
class ReportFigures:
    """The PNGs a report shows; None where the result has nothing to draw (or no image file is left)."""

    sample_size: bytes | None
    score_histograms: bytes | None
    thumbnails: bytes | None

    def files(self) -> dict[str, bytes]:
        """File name -> PNG, for the figures that exist."""
        named = {"sample_size_curve.png": self.sample_size, "score_histograms.png": self.score_histograms,
                 "thumbnails.png": self.thumbnails}
        return {name: png for name, png in named.items() if png is not None}


def headline(result: AuditResult) -> str:
    """The verdict in plain words: what was found, with the p-value, alpha, the image counts and the test."""
    tested = f"Tested on {result.n_suspect} suspect (published) and {result.n_reference} reference (unpublished) " \
             f"images with the {result.test} test"
    if result.permutations_run is not None:
        tested += f" ({result.permutations_run} permutations)"
    return f"{result.verdict_reason} {tested}, alpha = {result.alpha:g}, seed {result.seed}."


def _model_line(result: AuditResult) -> str:
    model = result.model
    where = model.endpoint if model.endpoint is not None else model.path
    return f"{where} ({model.family}, {ACCESS_LABELS.get(model.access, model.access)})"


def verdict_section(result: AuditResult) -> Section:
    rows = [("verdict", f"{result.verdict.label} (exit code {int(result.verdict.exit_code)})")]
    if result.p_value is not None:
        floor = f"; the smallest p that {result.permutations_requested} permutations can give is " \
                f"{p_text(1 / (result.permutations_requested + 1))}" if result.permutations_requested else ""
        rows.append(("p-value", p_text(result.p_value) + floor))
    if result.multiple_testing is not None:
        multiple = result.multiple_testing
        name = CORRECTION_NAMES[multiple.correction]
        rows.append(("adjusted p-value", f"{p_text(multiple.adjusted_p_value)} ({name} correction over the "
                                         f"{multiple.family_size} audits of a batch; this audit alone: "
                                         f"{multiple.verdict_before.label})"))
    rows += [
        ("alpha (significance level)", f"{result.alpha:g}"),
        ("test", result.test_description),
        ("suspect images (published)", f"{result.n_suspect}"),
        ("reference images (unpublished)", f"{result.n_reference}"),
        ("model", _model_line(result)),
        *((("features scored", calibration_text(result)),) if result.calibration else ()),
        ("model fingerprint", result.model.fingerprint),
        ("audit date (UTC)", result.created),
    ]
    blocks: list[Block] = [Facts(tuple(rows))]
    if result.effect is not None:
        effect = result.effect
        blocks += [
            Subheading("Effect size"),
            Paragraph("How far apart the two sets' scores are. The intervals are bootstrap intervals, a guide to "
                      "precision; the p-value above is the evidence."),
            Facts((
                ("AUC of scores", f"{effect.auc:.3f} ({interval(*effect.auc_ci)}); 0.5 = no separation"),
                ("mean score difference", f"{effect.mean_score_difference:+.3f} "
                                          f"({interval(*effect.mean_score_difference_ci)})"),
                ("Cohen's d", f"{effect.cohens_d:+.2f}"),
            )),
        ]
    return Section("Verdict", tuple(blocks))


def compared_section(result: AuditResult, figures: ReportFigures) -> Section | None:
    if figures.thumbnails is None:
        return None
    return Section("What was compared", (Figure(
        "thumbnails.png", figures.thumbnails,
        "The first images of each set, as listed in the manifest (only files that still have the hash the "
        "audit recorded are shown)."),))


def sample_size_section(result: AuditResult, figures: ReportFigures) -> Section | None:
    curve = result.sample_size_curve
    if curve is None or figures.sample_size is None:
        return None
    resamples = curve.points[0].resamples
    floor = f" The permutation test's p-value cannot go below 1/(B + 1) = " \
            f"{p_text(1 / (result.permutations_requested + 1))}, while the split test's can, so the star may lie " \
            "above the curve." if result.permutations_requested else ""
    return Section("p-value against the number of images", (
        Figure("sample_size_curve.png", figures.sample_size,
               f"For each n, {resamples} random audits of n suspect against n reference images drawn from this "
               f"audit's images, each decided by the {curve.test} test (seed {curve.seed}). Left: their median "
               f"p-value, with alpha dashed; the star is this audit's own p-value on all images. Right: the share "
               f"of those audits with p < alpha. Descriptive only: the verdict is the {result.test} test on all "
               "images." + floor + " Near the full set sizes the draws share most images, so the right-hand curve "
               "there overstates how often an independent audit of that size would succeed."),
        *power_blocks(result),
        Table(("images per set", "median p-value", f"share with p < {result.alpha:g}"),
              tuple((str(point.n), p_text(point.median_p), f"{point.fraction_below_alpha:.2f}")
                    for point in curve.points),
              (1, 1, 1), monospace=(0, 1, 2)),
    ), new_page=True)


def power_blocks(result: AuditResult) -> tuple[Block, ...]:
    power = result.power
    if power is None:
        return ()
    share = f"{power.target_power:.0%}"
    effect = (f"{power.images_per_set_from_effect} per set: a one-sided t-test on scores separated as well as "
              f"these (Cohen's d {power.cohens_d:+.2f}) reaches alpha {share} of the time; a lower bound, since "
              "smaller audits fit weaker scoring models" if power.images_per_set_from_effect is not None
              else "no positive effect to detect")
    curve = (f"{power.images_per_set_from_curve} per set: the smallest n above whose resampled audits reached "
             f"alpha {share} of the time" if power.images_per_set_from_curve is not None
             else "no n on the curve reached it")
    return (Facts(((f"images for {share} power (effect)", effect), (f"images for {share} power (curve)", curve))),)


def scores_section(result: AuditResult, figures: ReportFigures) -> Section | None:
    if figures.score_histograms is None:
        return None
    which = "held-out half (the split test fits on the other half)" if result.test == "split" else \
        "images, each scored by a model fitted without it (5-fold cross-fitting)"
    return Section("Scores of the two sets", (Figure(
        "score_histograms.png", figures.score_histograms,
        f"Scores of the {which}. The test asks whether suspect images score higher. Per-image scores are "
        "diagnostics (scores.csv), not evidence about any single image."),))


def features_section(result: AuditResult) -> Section:
    blocks: list[Block] = [Paragraph(
        "Each column alone: its AUC (suspect over reference; below 0.5 means lower in the suspect set, as "
        "expected for losses) and the scoring model's weight on it after standardising, fitted on all images. "
        "Diagnostic, not evidence: the test is on the combined score."
    )]
    if result.feature_diagnostics:
        blocks.append(Table(("feature", "AUC alone", "weight"),
                            tuple((row.name, f"{row.auc:.3f}", f"{row.weight:+.3f}")
                                  for row in result.feature_diagnostics),
                            (3, 1, 1), monospace=(1, 2)))
    if result.dropped_features:
        blocks.append(Paragraph("Dropped: " + "; ".join(f"{item.name} ({item.reason})"
                                                        for item in result.dropped_features) + "."))
    return Section("Features", tuple(blocks), new_page=True)


def controls_section(result: AuditResult) -> Section:
    controls = result.controls
    rows = []
    if controls.negative_control_p_value is not None:
        status = "passed" if controls.negative_control_passed else "FAILED: the verdict cannot be evidence"
        rows.append(("negative control", f"p = {p_text(controls.negative_control_p_value)} ({status}). The same "
                                          "test on two random halves of the reference set; both halves are unseen "
                                          "by the model, so it must not be significant."))
    rows.append(("identical files", "none in both sets (checked by sha256; the audit refuses to run otherwise)"))
    if controls.shift_p_value is not None:
        status = "passed" if controls.shift_passed else \
            f"FAILED at {controls.shift_alpha:g}: the verdict cannot be evidence"
        rows.append(("distribution shift", f"p = {p_text(controls.shift_p_value)} ({status}). The same test on "
                                           "model-free image statistics (size, format, compression, colour, "
                                           "sharpness, EXIF) and, for a conditional model, the captions' style and "
                                           "words or the mix of classes: if the sets differ without the model, a "
                                           "model-based difference proves nothing about training."))
    else:
        rows.append(("distribution shift", "not checked by the version that ran this audit"))
    if controls.control_model is not None:
        control = controls.control_model
        status = control_model_status(control, result.alpha)
        known = "the adapter's base, which cannot have seen the adapter's training images" if result.model.adapters \
            else "a model known not to have seen the suspect images"
        rows.append((control_label(result), f"{control.model.path}: {control_model_numbers(control, result)} "
                                            f"({status}). The same test on {known}: for evidence, the suspect "
                                            "model's AUC must be larger beyond chance (the interval's lower end "
                                            "above 0)."))
    rows.append(("near-duplicates", near_duplicates_text(controls) + " (perceptual hash, layout and framings)"))
    skipped = f"{len(result.skipped_files)} unreadable or non-image files skipped" if result.skipped_files \
        else "none"
    rows.append(("skipped files", skipped))
    blocks: list[Block] = [Facts(tuple(rows))]
    if controls.shift_statistics:
        blocks += [Subheading("Image statistics that differ most between the sets"), Table(
            ("statistic", "AUC", "suspect mean", "reference mean"),
            tuple((item.name, f"{item.auc:.3f}", f"{item.suspect_mean:.4g}", f"{item.reference_mean:.4g}")
                  for item in controls.shift_statistics), (2, 1, 1, 1), monospace=(1, 2, 3))]
    if controls.near_duplicates:
        blocks += [Subheading("Near-duplicates"), Table(
            ("file", "copy", "pHash bits", "layout correlation", "framing correlation", "left out"),
            tuple((_display_path(item.first_path, result), _display_path(item.second_path, result),
                   str(item.distance), f"{item.correlation:.3f}",
                   "" if item.framed_correlation is None else f"{item.framed_correlation:.3f}",
                   "yes" if item.removed else "no")
                  for item in controls.near_duplicates),
            (3, 3, 0.8, 1, 1, 0.8), small=True)]
    if result.skipped_files:
        blocks.append(Table(("set", "file", "reason"),
                            tuple((item.image_set, item.path, item.reason) for item in result.skipped_files),
                            (1, 4, 3), small=True))
    if result.warnings:
        blocks += [Subheading("Warnings"), Bullets(tuple(result.warnings))]
    return Section("Controls", tuple(blocks))


def method_section(result: AuditResult) -> Section:
    references = references_for(result.features, result.test)
    number = {reference: index for index, reference in enumerate(references, start=1)}

    def cite(*keys: str) -> str:
        return "[" + ", ".join(str(number[ref]) for ref in references if ref.key in keys) + "]"

    extractors = extractors_used(result.features)
    used = "; ".join(
        f"{name} ({CATALOGUE[name].measures}) {cite(*(ref.key for ref in CATALOGUE[name].papers))}"
        for name in extractors
    )
    test_text = (
        f"The p-value comes from refitting the whole procedure on {result.permutations_requested} random "
        f"relabellings of the images: p = (1 + number of relabellings whose statistic reaches the observed one) / "
        f"(B + 1) {cite('permutation-p')}, stopping early once the result is clearly not significant "
        f"{cite('sequential-p')}. This is exact when the model treats both sets alike."
        if result.test == "permutation" else
        "The scoring model is fitted on a random half of the images and the other half is tested with a "
        "one-sided Welch t-test; the tested scores come from a model that never saw them, so the test is valid."
    )
    blocks: list[Block] = [
        Paragraph(
            f"Dataset inference {cite('cdi', 'dataset-inference')}: a membership signal that is too weak to say "
            "anything about one image becomes clear when many images are tested together. For every image the "
            f"model computes {len(result.features)} membership features: {used}."
        ),
        *((Paragraph(
            "This is an adapter audit: every feature was also computed on the adapter's base, for the same image "
            "at the same noise, and how much the adapter changed it (adapted minus base; a log ratio for norms) "
            "is a column of its own (the columns ending in _minus_base). The change removes what the image "
            "itself contributes, its difficulty, where the base measures it. The base's own audit is the control "
            "model: evidence needs an effect beyond the base's, because a base that saw the suspect images makes "
            "even an adapter trained elsewhere change them differently."),) if result.calibration == "base" else ()),
        Paragraph(
            "A logistic regression on standardised features (log-scaled where they are norms) learns which "
            "combination separates the suspect from the reference images. Every image is scored by a model that "
            "never saw it, and the statistic is Welch's t of the suspect scores against the reference scores. "
            + test_text
        ),
        Paragraph(
            "This deliberately differs from the CDI reference implementation, which applies a t-test to the "
            "pooled scores of five classifiers that share most of their training images, as if the scores were "
            "independent; under the null hypothesis that rule rejects more often than alpha."
        ),
        Subheading("References"),
        Bullets(tuple(f"[{number[reference]}] {reference.text}" for reference in references)),
    ]
    return Section("Method", tuple(blocks), new_page=True)


def limitations_section(result: AuditResult) -> Section:
    items = [
        "This report is a statistical measurement, not legal advice.",
        "A result without evidence does not prove that the images were not used: a model can be trained on "
        "images without keeping enough of them for these features to detect with this many images (see the "
        "p-value against the number of images).",
        "The test is valid only if the reference images were never published (so never available for "
        "training) and come from the same source as the suspect images: same photographer or agency, cameras, "
        "period, editing and subjects. A systematic difference between the sets can make them separable for "
        "reasons that have nothing to do with training.",
        "Per-image scores (scores.csv and the histograms) are diagnostics; they are not evidence that any single "
        "image was used.",
        "The p-value is the chance of a difference at least this large if the model treated both sets alike; it "
        "is not the probability that the model was trained on the images.",
    ]
    if result.model.access == "black":
        items.append("The model was reached only through an endpoint: the audit assumes the endpoint served the "
                     "same model for every call.")
    return Section("Limitations", (Bullets(tuple(items)),))


def _display_path(path: str, result: AuditResult) -> str:
    """A path relative to its set's folder where it lies inside it (the manifest keeps the full path)."""
    for root in (result.suspect_dir, result.reference_dir):
        try:
            return str(Path(path).relative_to(Path(root).resolve()))
        except ValueError:
            continue
    return path


def model_facts(model: ModelInfo) -> Facts:
    return Facts((("path" if model.endpoint is None else "endpoint", model.endpoint or model.path),
                  ("family", model.family), ("access", ACCESS_LABELS.get(model.access, model.access)),
                  ("fingerprint", model.fingerprint), ("sample size", f"{model.sample_size} px"),
                  ("training timesteps", str(model.num_train_timesteps)),
                  ("prediction type", str(model.prediction_type)),
                  ("device, precision", f"{model.device}, {model.dtype}"),
                  *((("guidance", f"{model.guidance:g}"),) if model.guidance is not None else ()),
                  *((f"adapter {index}", adapter_text(adapter))
                    for index, adapter in enumerate(model.adapters, start=1))))


CLAIMS_NOTE = ("The adapter file's header is unsigned and anyone can edit or strip it, so these are leads, not "
               "evidence: they change neither the p-value nor the verdict.")


def adapter_claims_section(result: AuditResult) -> Section | None:
    """What each adapter file says about its training, beside the verdict and outside it."""
    if not result.model.adapters:
        return None
    blocks: list[Block] = []
    for adapter in result.model.adapters:
        blocks.append(Subheading(Path(adapter.path).name))
        if adapter.claims is None:
            blocks.append(Paragraph("The file has no training metadata (kohya's ss_* fields are absent or were "
                                    "stripped)."))
        else:
            blocks.append(Facts(claim_rows(adapter.claims)))
    blocks.append(Paragraph(CLAIMS_NOTE))
    return Section("What the adapter file says about its training (unverified)", tuple(blocks))


def appendix_sections(result: AuditResult, manifest: Manifest) -> tuple[Section, ...]:
    control = result.controls.control_model
    control_blocks = (Subheading("Control model"), model_facts(control.model)) if control is not None else ()
    extraction = result.extraction
    run_rows = [("images", str(extraction.images)), ("images from cache", str(extraction.images_from_cache)),
                ("model calls", str(extraction.model_calls)),
                *((("control model calls", f"{control.extraction.model_calls} ({control.extraction.images_from_cache} "
                   "images from cache)"),) if control is not None else ()),
                *((f"time: {stage}", f"{seconds:.1f} s") for stage, seconds in result.timings_seconds.items())]
    manifest_rows = tuple(
        (entry.role, _display_path(entry.path, result), entry.sha256, str(entry.size_bytes),
         f"{entry.width}x{entry.height}" if entry.width else "")
        for entry in manifest.files
    )
    counts = {role: sum(entry.role == role for entry in manifest.files)
              for role in ("suspect", "reference", "model", "control_model")}
    control_files = f" and {counts['control_model']} control model files" if counts["control_model"] else ""
    return (
        Section("Appendix: model and run", (
            model_facts(result.model), *control_blocks, Subheading("Run"), Facts(tuple(run_rows)),
            Subheading("Software versions"),
            Facts(tuple(result.versions.items())),
        ), new_page=True),
        Section("Appendix: configuration", (Facts(tuple((key, str(value))
                                                        for key, value in result.configuration.items())),)),
        Section("Appendix: manifest", (
            Paragraph(f"{counts['suspect']} suspect images (in {result.suspect_dir}), {counts['reference']} "
                      f"reference images (in {result.reference_dir}) and {counts['model']} model files{control_files}. "
                      "Set digest "
                      f"(sha256 over the sorted role and file hashes): {manifest.digest}. Full paths are in the "
                      "attached manifest.json; the manifest.json of the audit's folder also lists the files "
                      "written with this report, and 'cdi-audit verify' re-hashes every file."),
            Table(("role", "file", "sha256", "bytes", "pixels"), manifest_rows, (1.3, 3.2, 6.2, 1.2, 1.1),
                  monospace=(2, 3), small=True),
        ), folded=True),
    )


def evidence_section(evidence: EvidenceSummary, result: AuditResult) -> Section | None:
    """The search for near-copies (extract-evidence), beside but outside the verdict; only when it searched
    the audited model."""
    if evidence.model_fingerprint != result.model.fingerprint:
        return None
    blocks: list[Block] = [Paragraph(
        "Separately from the test above, the model's own generations were searched for near-copies of the "
        "images (SIDE: a pool of generations, clustered; a small classifier trained on the clusters guides "
        "further generations towards each of them). A near-copy is a picture anyone can judge; finding none "
        "shows nothing, since most trained images are never reproduced. This search does not enter the verdict.")]
    rows = [("generations", f"{evidence.pool} in the pool, {evidence.guided} guided towards "
                            f"{evidence.cohesive_clusters} of {evidence.clusters} clusters")]
    if evidence.best_similarity is not None:
        rows.append(("closest match", f"{evidence.best_similarity:.3f} (cosine of 16 x 16 mean-removed pixels)"))
    if evidence.p_value is not None:
        rows += [("near-copies", f"suspect {evidence.suspect_matched} of {evidence.suspect_total}, reference "
                                 f"{evidence.reference_matched} of {evidence.reference_total} at similarity >= "
                                 f"{evidence.threshold}"),
                 ("Fisher exact test", f"{p_text(evidence.p_value)} (one-sided, suspect > reference)"
                                       + (" - significant" if evidence.significant else ""))]
    blocks.append(Facts(tuple(rows)))
    if evidence.gallery is not None:
        blocks.append(Figure("gallery.png", evidence.gallery, "The suspect images closest to a generation (left) "
                             "beside that generation (right), with their similarity."))
    blocks.extend(Paragraph(note) for note in evidence.notes)
    return Section("Extraction evidence: what the model reproduces", tuple(blocks), new_page=True)


def _visible_strings(value):
    """``value`` (a document, a block, a tuple of them, a string) with every string made ``visible``."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, tuple):
        return tuple(_visible_strings(item) for item in value)
    if is_dataclass(value):
        return replace(value, **{item.name: _visible_strings(getattr(value, item.name)) for item in fields(value)})
    return value


def build_document(result: AuditResult, manifest: Manifest, figures: ReportFigures,
                   evidence: EvidenceSummary | None = None, unverified: str | None = None) -> Document:
    """The report of ``result``. ``manifest``: the one the documents carry (inputs and report.json).
    ``unverified``: why report.json does not match its manifest, for a rendering forced anyway.

    Paths, captions, names and adapter headers come from files anyone can craft: every string of the
    document has its control and bidirectional characters written as visible escapes here, once for both
    formats, so that neither can hide or reorder text (a right-to-left override, an escape sequence)."""
    sections = [
        verdict_section(result),
        compared_section(result, figures),
        sample_size_section(result, figures),
        scores_section(result, figures),
        evidence_section(evidence, result) if evidence is not None else None,
        features_section(result),
        controls_section(result),
        adapter_claims_section(result),
        method_section(result),
        limitations_section(result),
        *appendix_sections(result, manifest),
    ]
    document = Document(
        title="cdi-audit report",
        verdict=result.verdict,
        verdict_label=result.verdict.label,
        headline=headline(result),
        subtitle=f"Did this model train on these images? Audit of {result.created} (UTC), schema "
                 f"{result.schema_version}.",
        sections=tuple(section for section in sections if section is not None),
        unverified=None if unverified is None else UNVERIFIED_TEXT.format(reason=unverified),
    )
    return _visible_strings(document)
