"""The files of an audit's output folder: report.json (the source of truth), manifest.json, scores.csv.

Every file is written atomically, and only from the result: re-writing the same result gives the
same bytes.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from cdi_audit.cache import atomic_write
from cdi_audit.manifest import build_manifest
from cdi_audit.result import AuditResult

SCORES_HEADER = ("path", "sha256", "role", "diagnostic_score")


def write_file(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, content.encode())
    return path


def scores_csv(result: AuditResult) -> str:
    """Per-image scores, labelled diagnostic: the test is about the sets, never about one image."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SCORES_HEADER)
    for image in result.images:
        writer.writerow((image.path, image.sha256, image.role, "" if image.score is None else repr(image.score)))
    return buffer.getvalue()


def write_audit_files(result: AuditResult, out: Path) -> list[Path]:
    """report.json, manifest.json and scores.csv in ``out``; returns their paths."""
    return [
        write_file(out / "report.json", result.model_dump_json(indent=2) + "\n"),
        write_file(out / "manifest.json", build_manifest(result).model_dump_json(indent=2) + "\n"),
        write_file(out / "scores.csv", scores_csv(result)),
    ]
