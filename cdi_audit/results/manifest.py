"""The manifest: every file an audit read, hashed, so anyone can later check that a report speaks of
exactly these files (``cdi-audit verify``), the report itself, so that an edited report.json shows too, and
every other file the audit wrote into its folder, so that an edited or deleted figure shows as well.

Two manifests of one audit exist: the documents (report.pdf attaches it, report.html shows it) carry the
manifest of the inputs and report.json, since they cannot list their own hashes; manifest.json on disk is
that one plus the output files, written last.

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

# 2: the report (report.json, path relative to the manifest's folder) is listed too.
# 3: so is every other file of the output folder (role "output"). Older manifests still verify what they list.
MANIFEST_VERSION = "3"
READABLE_VERSIONS = ("1", "2", "3")
# Versions that list no output files: a file of the folder they do not list is neither vouched for nor suspect.
VERSIONS_WITHOUT_OUTPUTS = ("1", "2")
Role = Literal["suspect", "reference", "model", "control_model", "report", "output"]
# The roles of the audit's inputs; the set digest covers these only.
INPUT_ROLES = frozenset({"suspect", "reference", "model", "control_model"})
REPORT_NAME = "report.json"
MANIFEST_NAME = "manifest.json"


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


def output_entry(folder: Path, path: Path) -> ManifestEntry:
    """An output file as it lies in ``folder`` now, by its path relative to the folder (the manifest's)."""
    return ManifestEntry(path=path.relative_to(folder).as_posix(), role="output", sha256=file_sha256(path),
                         size_bytes=path.stat().st_size)


def documented_manifest(manifest: Manifest) -> Manifest:
    """The manifest the documents carry: inputs and report.json, without the output entries (which hash the
    documents themselves), so that re-rendering the same report.json gives the same documents."""
    return Manifest(created=manifest.created, digest=manifest.digest,
                    files=[entry for entry in manifest.files if entry.role != "output"])


def with_outputs(manifest: Manifest, outputs: list[ManifestEntry]) -> Manifest:
    """manifest.json as written to disk: the documented manifest and the output files, ordered by path so
    that the same files always give the same bytes."""
    return Manifest(created=manifest.created, digest=manifest.digest,
                    files=documented_manifest(manifest).files + sorted(outputs, key=lambda entry: entry.path))


def digest_matches(manifest: Manifest) -> bool:
    """Whether the set digest is the one its own input entries give: an edited hash in manifest.json (to make
    a swapped image pass) would otherwise go unseen, since verify compares files with the entries."""
    return manifest.digest == content_digest(manifest.files)


def _located(entry: ManifestEntry, folder: Path | None) -> Path:
    path = Path(entry.path)
    return Path(folder) / path if folder is not None and not path.is_absolute() else path


def custody_problem(manifest: Manifest | None, report: Path, read: tuple[str, ...]) -> str | None:
    """Why the report at ``report`` (whatever its name, compared with the manifest's report.json entry) and
    the files of its folder that a re-rendering reads (``read``, names, checked where listed) cannot be shown
    to be the audit's own, in a few words; None when they can. The input images are not needed: a report may
    be rendered on another machine."""
    if manifest is None:
        return f"there is no {MANIFEST_NAME} beside {report.name}"
    if not digest_matches(manifest):
        return f"the set digest in {MANIFEST_NAME} does not match its own entries"
    listed = {entry.path: entry for entry in manifest.files if entry.role in ("report", "output")}
    if REPORT_NAME not in listed:
        return f"{MANIFEST_NAME} (version {manifest.schema_version}) does not list {REPORT_NAME}"
    if file_sha256(report) != listed[REPORT_NAME].sha256:
        return f"its hash is not the one {MANIFEST_NAME} lists for {REPORT_NAME}"
    for name in read:
        path = report.parent / name
        if name in listed and path.is_file() and file_sha256(path) != listed[name].sha256:
            return f"{name} differs from its hash in {MANIFEST_NAME}"
    return None


def vouches_for(manifest: Manifest, name: str) -> bool:
    """Whether ``manifest`` lets a re-rendering use the folder's file ``name`` (checked by ``custody_problem``):
    a file it lists does; an unlisted one does only under a manifest that lists no outputs at all."""
    return manifest.schema_version in VERSIONS_WITHOUT_OUTPUTS or any(
        entry.path == name for entry in manifest.files if entry.role == "output")


@dataclass
class Verification:
    matched: list[ManifestEntry] = field(default_factory=list)
    changed: list[ManifestEntry] = field(default_factory=list)
    missing: list[ManifestEntry] = field(default_factory=list)
    digest_matches: bool = True  # the set digest is the one the manifest's own input entries give
    unlisted: list[str] = field(default_factory=list)  # files of the folder the manifest does not list

    @property
    def all_match(self) -> bool:
        return not self.changed and not self.missing

    @property
    def verified(self) -> bool:
        """Every listed file is there unchanged and the manifest itself is consistent; unlisted files are
        a note, not a failure (the manifest promises nothing about them)."""
        return self.all_match and self.digest_matches


def verify_manifest(manifest: Manifest, on_progress: Callable[[int, int], None] | None = None,
                    folder: Path | None = None) -> Verification:
    """Re-hash every file of ``manifest``: which still match, which changed, which are gone; and whether its
    set digest is its entries'. ``on_progress(done, total)`` reports progress. ``folder``: the manifest file's
    folder, against which relative paths (the report's and the outputs') resolve, and whose files the
    manifest does not list are named; None resolves them against the working directory."""
    outcome = Verification(digest_matches=digest_matches(manifest))
    for done, entry in enumerate(manifest.files, start=1):
        path = _located(entry, folder)
        if not path.is_file():
            outcome.missing.append(entry)
        elif file_sha256(path) != entry.sha256:
            outcome.changed.append(entry)
        else:
            outcome.matched.append(entry)
        if on_progress is not None:
            on_progress(done, len(manifest.files))
    if folder is not None:
        outcome.unlisted = unlisted_files(manifest, Path(folder))
    return outcome


def unlisted_files(manifest: Manifest, folder: Path) -> list[str]:
    """The names of the files directly in ``folder`` (manifest.json aside) that ``manifest`` does not list:
    added after the audit, or left by another one."""
    listed = {_located(entry, folder).resolve() for entry in manifest.files}
    return sorted(path.name for path in folder.iterdir()
                  if path.is_file() and path.name != MANIFEST_NAME and path.resolve() not in listed)
