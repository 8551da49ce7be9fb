"""``cdi-audit report`` and ``cdi-audit verify``: an audit's saved folder, rendered again or re-hashed.

Neither needs the model nor torch. Both hold to the folder's manifest.json: ``verify`` refuses a folder whose
files are not the ones the audit wrote, and ``report`` refuses to render a report.json that the manifest does
not vouch for, unless told to with --force; the documents then say UNVERIFIED and manifest.json is left as
it is, so that forcing a rendering never makes a tampered folder verify.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from cdi_audit.cli.app import guarded, prepare_out, run_stage, write_outputs
from cdi_audit.cli.options import JsonOption
from cdi_audit.console import shown, stderr_console
from cdi_audit.errors import ExitCode, InputProblem
from cdi_audit.evidence.summary import EVIDENCE_FILE, GALLERY_FILE

if TYPE_CHECKING:
    from cdi_audit.evidence.summary import EvidenceSummary
    from cdi_audit.results.manifest import Manifest, ManifestEntry
    from cdi_audit.results.schema import AuditResult

THUMBNAILS_FILE = "thumbnails.png"
# The files of an audit's folder that a re-rendering reads besides report.json.
RENDER_READS = (THUMBNAILS_FILE, EVIDENCE_FILE, GALLERY_FILE)


@guarded
def report(
    source: Annotated[Path, typer.Argument(
        metavar="REPORT", show_default=False,
        help="An audit's report.json, or the folder that holds it (written by 'check --out').")],
    pdf: Annotated[bool, typer.Option("--pdf", help="Render report.pdf.")] = False,
    html: Annotated[bool, typer.Option("--html", help="Render report.html.")] = False,
    out: Annotated[Path | None, typer.Option(
        metavar="DIR", show_default=False,
        help="Folder to write into (default: the folder of report.json).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Render a report.json that its manifest.json does not vouch for (or that has none): the "
                        "documents then say UNVERIFIED at the top, and manifest.json, report.json and scores.csv "
                        "are left as they are.")] = False,
) -> None:
    """Render report.pdf and report.html (both unless --pdf or --html) again from report.json.

    Needs neither the model nor torch. The same report.json gives byte-identical files. Refuses (exit 3) a
    report.json that does not match the manifest.json beside it, or has none, unless --force. Rewrites
    manifest.json with the files now in the folder. Uses thumbnails.png from the same folder when the
    manifest lists it, else the image files the report lists; adds the search for near-copies when
    'extract-evidence --out' wrote evidence.json there for the same model.
    """
    from cdi_audit.report.files import REPORT_FORMATS

    console = stderr_console()
    path = source / "report.json" if source.is_dir() else source
    formats = tuple(name for name, chosen in (("pdf", pdf), ("html", html)) if chosen) or REPORT_FORMATS
    destination = out or path.parent
    prepare_out(out)
    saved = load_saved(path, force, console)
    write_outputs(lambda: render_saved(console, saved, destination, formats), destination, console,
                  f"The report {path} was read")


@dataclass(frozen=True)
class SavedAudit:
    """An audit's report.json read back, with what the manifest.json beside it says of it."""

    path: Path  # the report.json
    report: bytes  # its bytes, as the manifest hashed them
    result: AuditResult
    documented: Manifest  # what the documents carry: the inputs and report.json
    on_disk: Manifest | None  # manifest.json as found beside it
    unverified: str | None  # why the manifest does not vouch for it (rendered only with --force)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def may_read(self, name: str) -> bool:
        """Whether the rendering may use the folder's file ``name``: anything when forced (the documents say
        UNVERIFIED), else only what the manifest vouches for, so that a figure or a search dropped into the
        folder later cannot enter a report that passes for verified."""
        from cdi_audit.results.manifest import vouches_for

        return self.unverified is not None or vouches_for(self.on_disk, name)


def load_saved(path: Path, force: bool, console: Console) -> SavedAudit:
    """The audit saved at ``path`` (report.json) and the manifest beside it, checked before anything is
    written: InputProblem (exit 3) when the manifest does not vouch for the report, unless ``force``."""
    from cdi_audit.results.manifest import (
        MANIFEST_NAME,
        READABLE_VERSIONS,
        Manifest,
        custody_problem,
        documented_manifest,
    )
    from cdi_audit.results.schema import SCHEMA_VERSION, AuditResult

    result = read_saved(AuditResult, path, "report", (SCHEMA_VERSION,),
                        "give the report.json an audit wrote with --out")
    manifest_path = path.parent / MANIFEST_NAME
    on_disk = read_saved(Manifest, manifest_path, "manifest", READABLE_VERSIONS,
                         "re-run the audit with --out") if manifest_path.is_file() else None
    problem = custody_problem(on_disk, path, RENDER_READS)
    if problem is not None and not force:
        raise InputProblem(f"{path} is not vouched for by its manifest ({problem}); re-run the audit with --out, "
                           "or render it marked UNVERIFIED with 'cdi-audit report --force'.")
    if problem is not None:
        console.print(f"[bold red]UNVERIFIED[/] {shown(path)}: {shown(problem)}; the documents say so, and "
                      f"{MANIFEST_NAME} is left as it is.")
    documented = documented_manifest(on_disk) if on_disk is not None else rebuilt_manifest(result, path)
    return SavedAudit(path, path.read_bytes(), result, documented, on_disk, problem)


def rebuilt_manifest(result: AuditResult, path: Path) -> Manifest:
    """The manifest a forced rendering of a report without one shows, made again from the files it lists."""
    from cdi_audit.results.manifest import build_manifest

    try:
        return build_manifest(result)
    except OSError as error:
        raise InputProblem(f"No manifest.json beside {path}, and the files the report lists cannot be read "
                           f"to rebuild it ({type(error).__name__}).") from None


def render_saved(console: Console, saved: SavedAudit, out: Path, formats: tuple[str, ...],
                 fresh: tuple[Path, ...] = ()) -> list[Path]:
    """Render ``saved`` again into ``out``. Vouched for: every file of an output folder and, last, its
    manifest.json (listing the files of the folder's previous manifest that were not rewritten). Forced:
    only the figures and the documents, marked UNVERIFIED. ``fresh``: files this command has just written
    into the report's folder (the search's), listed in the manifest and read as they are."""
    from cdi_audit.report.files import write_output_folder, write_reports
    from cdi_audit.results.manifest import output_entry

    thumbnails = saved_thumbnails(console, saved)
    evidence = saved_evidence(console, saved, {path.name for path in fresh})
    if saved.unverified is not None:
        return write_reports(saved.result, saved.documented, out, formats, thumbnails, evidence, saved.unverified)
    kept = [output_entry(out, path) for path in fresh]
    if out.resolve() == saved.folder.resolve():
        kept += [entry for entry in previous_outputs(saved) if entry.path not in {path.name for path in fresh}]
    return write_output_folder(saved.result, saved.documented, out, formats, thumbnails, evidence, kept,
                               saved.report)


def previous_outputs(saved: SavedAudit) -> list[ManifestEntry]:
    """The output entries of the folder's manifest, kept for the files a re-rendering leaves as they are:
    with their old hashes, so that a file changed since still fails ``verify``."""
    return [entry for entry in saved.on_disk.files if entry.role == "output"]


def saved_thumbnails(console: Console, saved: SavedAudit) -> bytes | None:
    """The folder's thumbnails.png where the manifest vouches for it, else drawn again from the image files
    (None when none is left)."""
    from cdi_audit.report.thumbnails import thumbnail_strip

    path = saved.folder / THUMBNAILS_FILE
    if path.is_file() and saved.may_read(path.name):
        return path.read_bytes()
    if path.is_file():
        console.print(f"[yellow]warning:[/] {shown(path)} is not in the manifest; the thumbnails are drawn again "
                      "from the image files.")
    return thumbnail_strip(saved.result)


def saved_evidence(console: Console, saved: SavedAudit, fresh: set[str]) -> EvidenceSummary | None:
    """The search for near-copies saved in the folder, when the manifest vouches for its files (or this
    command just wrote them, ``fresh``) and it searched the audited model."""
    from cdi_audit.evidence.summary import read_evidence

    present = [name for name in (EVIDENCE_FILE, GALLERY_FILE) if (saved.folder / name).is_file()]
    if not all(name in fresh or saved.may_read(name) for name in present):
        console.print(f"[yellow]warning:[/] {shown(saved.folder / EVIDENCE_FILE)} is not in the manifest; the "
                      "report leaves the search out.")
        return None
    try:
        evidence = read_evidence(saved.folder)
    except ValueError as error:
        raise InputProblem(f"{error}; re-run extract-evidence with --out.") from None
    if evidence is not None and evidence.model_fingerprint != saved.result.model.fingerprint:
        console.print(f"[yellow]warning:[/] {shown(saved.folder / EVIDENCE_FILE)} searched another model than the "
                      "audit's; the report leaves it out.")
    return evidence


def _either(versions: tuple[str, ...]) -> str:
    return versions[-1] if len(versions) == 1 else ", ".join(versions[:-1]) + " or " + versions[-1]


def _schema_version(content: bytes) -> str | None:
    """The schema_version a saved JSON file declares, if it is a JSON object that declares one."""
    try:
        data = json.loads(content)
    except ValueError:
        return None
    version = data.get("schema_version") if isinstance(data, dict) else None
    return None if version is None else str(version)


def read_saved(model, path: Path, what: str, versions: tuple[str, ...], hint: str):
    """``path`` parsed as the pydantic ``model``, of one of the schema ``versions`` this cdi-audit reads;
    InputProblem (exit 3) with one sentence when it cannot be (naming both versions when they differ)."""
    from pydantic import ValidationError

    from cdi_audit.version import __version__

    try:
        content = path.read_bytes()
    except OSError as error:
        raise InputProblem(f"{path} is not a readable cdi-audit {what} ({type(error).__name__}); {hint}.") from None
    version = _schema_version(content)
    if version is not None and version not in versions:
        raise InputProblem(f"{path} is a cdi-audit {what} of schema version {version}, and cdi-audit {__version__} "
                           f"reads schema version {_either(versions)}; use the cdi-audit version that wrote it.")
    try:
        return model.model_validate_json(content)
    except ValidationError as error:
        raise InputProblem(f"{path} is not a readable cdi-audit {what} ({type(error).__name__}); {hint}.") from None


@guarded
def verify(
    folder: Annotated[Path, typer.Argument(
        metavar="DIR", show_default=False,
        help="An audit's output folder (holding manifest.json), or the manifest.json file itself.")],
    json_output: JsonOption = False,
) -> None:
    """Re-hash the files an audit read and wrote (its manifest) and say which still match, changed or are missing.

    Exit 0 when every file matches and the manifest's set digest is the one its entries give, 3 otherwise
    (a folder without manifest.json included). Files of the folder that the manifest does not list are
    named, not counted. Needs neither the model nor torch.
    """
    from cdi_audit.results.manifest import (
        MANIFEST_NAME,
        READABLE_VERSIONS,
        Manifest,
        content_digest,
        verify_manifest,
    )

    console = stderr_console()
    path = folder / MANIFEST_NAME if folder.is_dir() else folder
    if not path.is_file():
        raise InputProblem(f"No {MANIFEST_NAME} at {path}, so nothing says which files the audit wrote (a write "
                           "that fails part-way leaves none); give the folder an audit wrote with --out.")
    manifest = read_saved(Manifest, path, "manifest", READABLE_VERSIONS, "give the folder an audit wrote with --out")
    outcome = run_stage(lambda progress: verify_manifest(manifest, progress.counter("re-hashing files"), path.parent),
                        console)
    for label, entries in (("changed", outcome.changed), ("missing", outcome.missing)):
        for entry in entries:
            console.print(f"[bold red]{label}[/] {entry.role} {shown(entry.path)}")
    if not outcome.digest_matches:
        console.print(f"[bold red]edited[/] {shown(path.name)}: its set digest {manifest.digest[:16]}… is not the "
                      f"{content_digest(manifest.files)[:16]}… its own entries give")
    if outcome.unlisted:
        console.print(f"[yellow]note:[/] not in the manifest, so not checked: {shown(', '.join(outcome.unlisted))}")
    digest = "" if outcome.digest_matches else " (not its entries')"
    summary = (f"{len(outcome.matched)} of {len(manifest.files)} files match the manifest"
               f" ({len(outcome.changed)} changed, {len(outcome.missing)} missing); set digest "
               f"{manifest.digest[:16]}…{digest}")
    console.print(("[bold green]VERIFIED[/] " if outcome.verified else "[bold red]NOT VERIFIED[/] ") + summary)
    if json_output:
        typer.echo(json.dumps({
            "verified": outcome.verified, "digest": manifest.digest, "digest_matches_entries": outcome.digest_matches,
            "matched": len(outcome.matched), "changed": [entry.path for entry in outcome.changed],
            "missing": [entry.path for entry in outcome.missing], "unlisted": outcome.unlisted,
        }, indent=2))
    raise typer.Exit(int(ExitCode.SUCCESS if outcome.verified else ExitCode.INPUT_PROBLEM))
