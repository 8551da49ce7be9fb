"""The files of an audit's output folder: report.json (the source of truth), manifest.json, scores.csv,
the figures, report.html and report.pdf.

Every file is written atomically, and only from the result (plus the thumbnails, drawn from the audited
image files): re-writing the same result gives the same bytes. manifest.json, which hashes all the others, is
deleted before anything else is written and written last, so a write that fails part-way (a full disk)
leaves a folder that ``cdi-audit verify`` refuses, never one that passes. Torch-free, so ``cdi-audit report``
re-renders a folder without the model.
"""

from __future__ import annotations

import contextlib
import csv
import io
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from cdi_audit.cache import atomic_write
from cdi_audit.errors import OutputProblem
from cdi_audit.evidence.summary import EvidenceSummary
from cdi_audit.results.manifest import (
    MANIFEST_NAME,
    REPORT_NAME,
    Manifest,
    ManifestEntry,
    build_manifest,
    output_entry,
    with_outputs,
)
from cdi_audit.results.schema import AuditResult, EvaluationResult, report_json

SCORES_HEADER = ("path", "sha256", "role", "diagnostic_score")
REPORT_FORMATS = ("html", "pdf")


def write_file(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, content.encode() if isinstance(content, str) else content)
    return path


def manifest_json(manifest: Manifest) -> str:
    return manifest.model_dump_json(indent=2) + "\n"


def scores_csv(result: AuditResult) -> str:
    """Per-image scores, labelled diagnostic: the test is about the sets, never about one image."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SCORES_HEADER)
    for image in result.images:
        writer.writerow((image.path, image.sha256, image.role, "" if image.score is None else repr(image.score)))
    return buffer.getvalue()


def write_reports(result: AuditResult, manifest: Manifest, out: Path, formats: Iterable[str],
                  thumbnails: bytes | None, evidence: EvidenceSummary | None = None,
                  unverified: str | None = None) -> list[Path]:
    """The figures as PNGs, and report.html / report.pdf for the chosen ``formats``; returns the paths.
    ``manifest``: the one the documents carry (inputs and report.json). ``unverified``: why the report.json
    does not match its manifest, when rendered anyway (--force); the documents say so at the top."""
    from cdi_audit.report.content import ReportFigures, build_document
    from cdi_audit.report.figures import sample_size_plot, score_histograms_plot

    formats = set(formats)
    figures = ReportFigures(sample_size_plot(result), score_histograms_plot(result), thumbnails)
    document = build_document(result, manifest, figures, evidence, unverified)
    paths = [write_file(out / name, png) for name, png in figures.files().items()]
    if "html" in formats:
        from cdi_audit.report.html import render_html

        paths.append(write_file(out / "report.html", render_html(document)))
    if "pdf" in formats:
        from cdi_audit.report.pdf import render_pdf

        attachments = {"report.json": report_json(result).encode(), "manifest.json": manifest_json(manifest).encode()}
        paths.append(write_file(out / "report.pdf", render_pdf(document, result.created, attachments)))
    return paths


def discard_manifest(out: Path) -> None:
    """Delete ``out``'s manifest.json before the folder's files are rewritten: until the new one is written
    last, the folder verifies against nothing, so a write that fails half-way cannot leave it passing."""
    (out / MANIFEST_NAME).unlink(missing_ok=True)


def write_manifest(out: Path, manifest: Manifest, written: list[Path], kept: Iterable[ManifestEntry]) -> Path:
    """manifest.json: ``manifest`` (inputs and report.json) plus an output entry for every other file just
    ``written`` into ``out``, and the ``kept`` entries of output files left as they were (those not
    rewritten now)."""
    outputs = [output_entry(out, path) for path in written if path.name != REPORT_NAME]
    rewritten = {entry.path for entry in outputs}
    outputs += [entry for entry in kept if entry.path not in rewritten]
    return write_file(out / MANIFEST_NAME, manifest_json(with_outputs(manifest, outputs)))


def write_output_folder(result: AuditResult, manifest: Manifest, out: Path, formats: Iterable[str],
                        thumbnails: bytes | None, evidence: EvidenceSummary | None = None,
                        kept: Iterable[ManifestEntry] = (), report: bytes | None = None) -> list[Path]:
    """Everything an audit leaves in ``out``, from the result, its manifest (inputs and report.json) and the
    thumbnail strip (and a search for near-copies, when ``extract-evidence`` wrote one into the folder).
    manifest.json goes first and comes back last, listing every file written; ``kept``: entries of output
    files already in ``out`` to list as they are unless rewritten now (a re-rendering of one format keeps
    the other's; the search's own files). ``report``: report.json's bytes as the manifest hashed them (a
    re-rendering copies them: re-serialising a report an older version wrote could change them)."""
    discard_manifest(out)
    written = [
        write_file(out / REPORT_NAME, report_json(result) if report is None else report),
        write_file(out / "scores.csv", scores_csv(result)),
        *write_reports(result, manifest, out, formats, thumbnails, evidence),
    ]
    return [*written, write_manifest(out, manifest, written, kept)]


def write_audit_files(result: AuditResult, out: Path, formats: Iterable[str] = REPORT_FORMATS) -> list[Path]:
    """The output folder of a finished audit (manifest and thumbnails made from its image files)."""
    from cdi_audit.report.thumbnails import thumbnail_strip

    return write_output_folder(result, build_manifest(result), out, formats, thumbnail_strip(result))


def write_evaluation_files(result: EvaluationResult, out: Path) -> list[Path]:
    """An evaluation's folder: evaluation.json and the plot of its p-value curves."""
    from cdi_audit.report.plots import plot_p_value_curves

    return [write_file(out / "evaluation.json", result.model_dump_json(indent=2) + "\n"),
            plot_p_value_curves(result, out / "p_value_curves.png")]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def prepare_output_folder(out: Path, inputs: Iterable[tuple[str, Path | None]] = ()) -> None:
    """Check an output folder before any model work: not a file, not inside an input folder (whose next scan
    would read the report's own figures as images), and writable (created when missing). ``inputs``: (what the
    folder is, e.g. "the suspect folder", folder). Raises ``OutputProblem`` (exit 2) saying which."""
    if out.exists() and not out.is_dir():
        raise OutputProblem(f"The output folder {out} is a file; give a folder for the audit's files.")
    resolved = out.resolve()
    for role, folder in inputs:
        if folder is not None and folder.is_dir() and _inside(resolved, folder.resolve()):
            raise OutputProblem(f"The output folder {out} lies inside {role} {folder}, whose next scan would "
                                "count the report's figures as images; choose a folder outside the image folders.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise OutputProblem(f"Cannot write into the output folder {out} ({error.strerror or type(error).__name__}); "
                            "choose a folder you may write to.") from None


@contextlib.contextmanager
def output_errors(out: Path, finished: str) -> Iterator[None]:
    """A failure to write a finished run's files says that the work itself finished (``finished``: e.g. the
    verdict) but is an ``OutputProblem`` (exit 2), never a verdict."""
    try:
        yield
    except OSError as error:
        raise OutputProblem(f"{finished}, but its files could not be written to {out} "
                            f"({error.strerror or type(error).__name__}); free space or choose another output "
                            "folder, then re-run (the features are cached).") from None
