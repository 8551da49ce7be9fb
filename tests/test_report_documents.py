"""report.pdf and report.html: what they say, in which order, what they carry, and that re-rendering from
report.json (without torch) gives the same bytes."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.report.files import manifest_json, write_reports
from cdi_audit.report.thumbnails import _unchanged_images
from cdi_audit.results.manifest import Manifest, documented_manifest
from cdi_audit.results.schema import AuditResult
from cdi_audit.results.verdict import Verdict
from cdi_audit.statistics.power import images_for_power

NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None; "
REPORT_FILES = ("report.pdf", "report.html", "sample_size_curve.png", "score_histograms.png", "thumbnails.png",
                "report.json", "manifest.json", "scores.csv")
# docs/reports.md: the order a reader meets the sections in.
SECTION_ORDER = ("Verdict", "What was compared", "p-value against the number of images", "Scores of the two sets",
                 "Features", "Controls", "Method", "Limitations", "Appendix: model and run",
                 "Appendix: configuration", "Appendix: manifest")


def loaded(folder: Path) -> tuple[AuditResult, Manifest]:
    return (AuditResult.model_validate_json((folder / "report.json").read_bytes()),
            Manifest.model_validate_json((folder / "manifest.json").read_bytes()))


def flat(text: str) -> str:
    """Rich's boxed, wrapped CLI text as one line."""
    return " ".join(text.replace("│", " ").split())


def appear_in_order(text: str, titles: tuple[str, ...]) -> bool:
    position = 0
    for title in titles:
        position = text.find(title, position)
        if position < 0:
            return False
    return True


def pdf_text(pdf: bytes) -> list[str]:
    """Text of each page, with runs of whitespace made single spaces."""
    return [" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages]


@pytest.fixture(scope="module")
def sample_folder(sample_audit: tuple[int, dict, Path]) -> Path:
    code, _, folder = sample_audit
    assert code == 1
    return folder


def test_the_pdf_states_the_verdict_p_value_and_counts_in_order(sample_folder: Path) -> None:
    result, manifest = loaded(sample_folder)
    pages = pdf_text((sample_folder / "report.pdf").read_bytes())
    first = pages[0]
    assert "EVIDENCE" in first and "NO EVIDENCE" not in first
    assert f"p = {result.p_value:.3g} < alpha = {result.alpha:g}" == "p = 0.000999 < alpha = 0.01"
    assert "p = 0.000999 < alpha = 0.01" in first
    assert f"Tested on {result.n_suspect} suspect (published) and {result.n_reference} reference (unpublished)" in first
    assert "suspect images (published) 64" in first and "exit code 1" in first
    assert f"{result.effect.auc:.3f} (95% CI {result.effect.auc_ci[0]:.3f} to {result.effect.auc_ci[1]:.3f})" in first
    text = " ".join(pages)
    assert appear_in_order(text, SECTION_ORDER) and not appear_in_order(text, SECTION_ORDER[::-1])
    # Page 2 holds the sample-size curve and the histograms, as docs/reports.md orders them.
    assert "p-value against the number of images" in pages[1] and "Scores of the two sets" in pages[1]
    for point in result.sample_size_curve.points:
        assert f"{point.n} {point.median_p:.3g} {point.fraction_below_alpha:.2f}" in text
    assert f"negative control p = {result.controls.negative_control_p_value:.3g} (passed)" in text
    assert f"distribution shift p = {result.controls.shift_p_value:.3g} (passed)" in text
    power = result.power
    reaching = [point.n for point in result.sample_size_curve.points if point.fraction_below_alpha >= 0.8]
    assert (power.images_per_set_from_effect, power.images_per_set_from_curve) == (
        images_for_power(result.effect.cohens_d, result.alpha), min(reaching))
    assert f"images for 80% power (curve) {min(reaching)} per set" in text
    assert f"images for 80% power (effect) {power.images_per_set_from_effect} per set" in text
    assert "not legal advice" in text and "does not prove that the images were not used" in text
    assert "CDI: Copyrighted Data Identification in Diffusion Models" in text
    assert "Are Diffusion Models Vulnerable to Membership Inference Attacks?" in text  # secmi is in 'fast'
    # The appendix lists every input file and report.json with its full hash, and the set digest (the output
    # files, the PDF among them, cannot be in it).
    compact = text.replace(" ", "")
    shown = documented_manifest(manifest).files
    assert len(shown) == 133 and all(entry.sha256 in compact for entry in shown) and manifest.digest in compact
    for row in result.feature_diagnostics:
        assert f"{row.name} {row.auc:.3f} {row.weight:+.3f}" in text


def test_the_pdf_carries_report_and_manifest_and_the_audit_date(sample_folder: Path) -> None:
    reader = PdfReader(sample_folder / "report.pdf")
    attachments = {name: contents[0] for name, contents in reader.attachments.items()}
    result, manifest = loaded(sample_folder)
    # The manifest of the inputs and report.json: manifest.json on disk less the entries of the output files.
    assert attachments == {"report.json": (sample_folder / "report.json").read_bytes(),
                           "manifest.json": manifest_json(documented_manifest(manifest)).encode()}
    assert reader.metadata.creation_date == datetime.fromisoformat(result.created)
    assert reader.metadata.title == "cdi-audit report: EVIDENCE"


def test_report_rerenders_byte_identical_files_without_torch(sample_folder: Path, tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", NO_TORCH + "from cdi_audit.cli import app; app(sys.argv[1:])",
         "report", str(sample_folder / "report.json"), "--out", str(tmp_path)],
        capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    for name in REPORT_FILES:
        assert (tmp_path / name).read_bytes() == (sample_folder / name).read_bytes(), name


def test_report_renders_only_the_format_asked_for(sample_folder: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(sample_folder), "--html", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "report.html").read_bytes() == (sample_folder / "report.html").read_bytes()
    assert not (tmp_path / "report.pdf").exists()


def test_report_refuses_what_is_not_a_report(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text('{"verdict": "evidence"}')
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 3 and "is not a readable cdi-audit report" in flat(result.stderr)


def test_html_is_self_contained_readable_on_a_phone_and_escapes_user_text(sample_folder: Path,
                                                                          tmp_path: Path) -> None:
    page = (sample_folder / "report.html").read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "0.000999 &lt; alpha = 0.01" in page
    assert appear_in_order(page, tuple(f">{title}</h2>" for title in SECTION_ORDER))
    result, manifest = loaded(sample_folder)
    hostile = result.model_copy(update={"suspect_dir": "<script>alert(1)</script>"})
    write_reports(hostile, manifest, tmp_path, ("html",), None)
    escaped = (tmp_path / "report.html").read_text()
    assert "<script" not in escaped and "&lt;script&gt;alert(1)&lt;/script&gt;" in escaped


def test_an_inconclusive_result_without_scores_still_renders(sample_folder: Path, tmp_path: Path) -> None:
    result, manifest = loaded(sample_folder)
    degenerate = result.model_copy(update={
        "verdict": Verdict.INCONCLUSIVE, "verdict_reason": "Every feature was constant across the images.",
        "p_value": None, "statistic": None, "effect": None, "sample_size_curve": None, "feature_diagnostics": [],
        "images": [image.model_copy(update={"score": None}) for image in result.images],
    })
    written = {path.name for path in write_reports(degenerate, manifest, tmp_path, ("pdf", "html"), None)}
    assert written == {"report.pdf", "report.html"}  # nothing to draw
    text = " ".join(pdf_text((tmp_path / "report.pdf").read_bytes()))
    assert "INCONCLUSIVE" in text and "Every feature was constant" in text and "exit code 5" in text
    assert "Scores of the two sets" not in text and "AUC of scores" not in text


def test_thumbnails_skip_files_that_changed_since_the_audit(sample_folder: Path) -> None:
    result, _ = loaded(sample_folder)
    suspects = [image for image in result.images if image.role == "suspect"]
    first_three = _unchanged_images(result, "suspect", 3)
    tampered = result.model_copy(update={"images": [
        image.model_copy(update={"sha256": "0" * 64}) if image is suspects[0] else image for image in result.images
    ]})
    shifted = _unchanged_images(tampered, "suspect", 3)
    assert len(shifted) == 3
    assert (shifted[0] == first_three[1]).all() and (shifted[1] == first_three[2]).all()
    assert not (shifted[0] == first_three[0]).all()


def test_check_refuses_report_formats_it_cannot_write(image_sets, tiny_model) -> None:
    suspect, reference = image_sets
    base = ["check", str(suspect), "--reference", str(reference), "--model", str(tiny_model)]
    without_out = CliRunner().invoke(app, [*base, "--report", "pdf"])
    assert without_out.exit_code == 2 and "add --out DIR" in flat(without_out.stderr)
    unknown = CliRunner().invoke(app, [*base, "--report", "docx", "--out", "x"])
    assert unknown.exit_code == 2 and "choose pdf, html" in flat(unknown.stderr)


def test_the_terminal_summary_names_the_images_needed(sample_folder: Path) -> None:
    from rich.console import Console

    from cdi_audit.report.terminal import print_summary

    result, _ = loaded(sample_folder)
    console = Console(record=True, width=200)
    print_summary(result, console)
    first = result.sample_size_curve.points[0]
    assert first.n == 10 and first.median_p < 0.01  # the sample's signal is strong
    assert "images needed median p < alpha already at 10 per set, the smallest size tried (split test, 100 " \
           "resamples per size)" in flat(console.export_text())
    never = result.model_copy(update={"sample_size_curve": result.sample_size_curve.model_copy(update={
        "points": [point.model_copy(update={"median_p": 0.5}) for point in result.sample_size_curve.points]})})
    console = Console(record=True, width=200)
    print_summary(never, console)
    assert "median p stays >= alpha up to 64 per set" in flat(console.export_text())
