"""The manifest: every file an audit read, hashed, so anyone can later check that a report speaks of
exactly these files (``cdi-audit verify``), and the report itself, so that an edited report.json shows too.

Torch-free: verifying a report needs neither the model nor a GPU.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel

from cdi_audit.inputs.images import file_sha256
from cdi_audit.results.schema import AuditResult, report_json

# 2: the report (report.json, path relative to the manifest's folder) is listed too. Version 1 manifests,
# without it, still verify.
MANIFEST_VERSION = "2"
Role = Literal["suspect", "reference", "model", "control_model", "report"]
# The roles of the audit's inputs; the set digest covers these only.
INPUT_ROLES = frozenset({"suspect", "reference", "model", "control_model"})
REPORT_NAME = "report.json"


class ManifestEntry(BaseModel):
    path: str
    role: Role
    sha256: str
    size_bytes: int
    width: int | None = None  # images only
    height: int | None = None


class Manifest(BaseModel):
    schema_version: str = MANIFEST_VERSION
    created: str  # the audit's own time, so the manifest of one audit is always the same file
    # sha256 over the sorted (role, file sha256) pairs of the inputs (images and model files, not the report):
    # the same inputs give the same digest wherever the files lie, whatever the report says about them.
    digest: str
    files: list[ManifestEntry]


def content_digest(entries: list[ManifestEntry]) -> str:
    """The set digest of the inputs among ``entries``; the report entry is left out, so that the digest keeps
    meaning "the same inputs" across re-renderings and versions of the manifest."""
    lines = sorted(f"{entry.role}\0{entry.sha256}\n" for entry in entries if entry.role in INPUT_ROLES)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _dimensions(path: Path) -> tuple[int | None, int | None]:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.size
    except OSError:
        return None, None


def report_entry(result: AuditResult) -> ManifestEntry:
    """The report as the output folder holds it: the bytes ``report_json`` writes, by a path relative to the
    manifest's folder (the two lie side by side, wherever the folder is moved)."""

    content = report_json(result).encode()
    return ManifestEntry(path=REPORT_NAME, role="report", sha256=hashlib.sha256(content).hexdigest(),
                         size_bytes=len(content))


def build_manifest(result: AuditResult) -> Manifest:
    """The manifest of an audit: its images (hashes from the audit), its model files (and the control
    model's), and the report.json written from ``result``."""
    entries = []
    for image in result.images:
        path = Path(image.path)
        width, height = _dimensions(path)
        entries.append(ManifestEntry(path=image.path, role=image.role, sha256=image.sha256,
                                     size_bytes=path.stat().st_size, width=width, height=height))
    entries += [ManifestEntry(path=file.path, role="model", sha256=file.sha256, size_bytes=file.size_bytes)
                for file in result.model.files]
    control = result.controls.control_model
    if control is not None:
        entries += [ManifestEntry(path=file.path, role="control_model", sha256=file.sha256,
                                  size_bytes=file.size_bytes) for file in control.model.files]
    entries.append(report_entry(result))
    return Manifest(created=result.created, digest=content_digest(entries), files=entries)


@dataclass
class Verification:
    matched: list[ManifestEntry] = field(default_factory=list)
    changed: list[ManifestEntry] = field(default_factory=list)
    missing: list[ManifestEntry] = field(default_factory=list)

    @property
    def all_match(self) -> bool:
        return not self.changed and not self.missing


def verify_manifest(manifest: Manifest, on_progress: Callable[[int, int], None] | None = None,
                    folder: Path | None = None) -> Verification:
    """Re-hash every file of ``manifest``: which still match, which changed, which are gone.
    ``on_progress(done, total)`` reports progress. ``folder``: the manifest file's folder, against which
    relative paths (the report's) resolve; None resolves them against the working directory."""
    outcome = Verification()
    for done, entry in enumerate(manifest.files, start=1):
        path = Path(entry.path)
        if folder is not None and not path.is_absolute():
            path = Path(folder) / path
        if not path.is_file():
            outcome.missing.append(entry)
        elif file_sha256(path) != entry.sha256:
            outcome.changed.append(entry)
        else:
            outcome.matched.append(entry)
        if on_progress is not None:
            on_progress(done, len(manifest.files))
    return outcome
