"""``cdi-audit report`` and ``cdi-audit verify``: an audit's saved folder, rendered again or re-hashed.

Neither needs the model nor torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cdi_audit.cli.app import guarded, prepare_out, run_stage, write_outputs
from cdi_audit.cli.options import JsonOption
from cdi_audit.console import shown, stderr_console
from cdi_audit.errors import ExitCode, InputProblem


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
) -> None:
    """Render report.pdf and report.html (both unless --pdf or --html) again from report.json.

    Needs neither the model nor torch. The same report.json gives byte-identical files. Uses manifest.json and
    thumbnails.png from the same folder when they are there, else the image files the report lists; adds the
    search for near-copies when 'extract-evidence --out' wrote evidence.json there for the same model.
    """
    from cdi_audit.report.files import REPORT_FORMATS

    console = stderr_console()
    path = source / "report.json" if source.is_dir() else source
    formats = tuple(name for name, chosen in (("pdf", pdf), ("html", html)) if chosen) or REPORT_FORMATS
    destination = out or path.parent
    prepare_out(out)
    write_outputs(lambda: render_saved(console, path, destination, formats), destination, console,
                  f"The report {path} was read")


def render_saved(console: Console, path: Path, out: Path, formats: tuple[str, ...]) -> list[Path]:
    """Re-render the output folder of the audit saved at ``path`` (report.json) into ``out``."""
    from cdi_audit.evidence.summary import read_evidence
    from cdi_audit.report.files import write_output_folder
    from cdi_audit.report.thumbnails import thumbnail_strip
    from cdi_audit.results.manifest import Manifest, build_manifest
    from cdi_audit.results.schema import AuditResult

    result = read_saved(AuditResult, path, "report", "give the report.json an audit wrote with --out")
    folder = path.parent
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        manifest = read_saved(Manifest, manifest_path, "manifest", "re-run the audit with --out")
    else:
        try:
            manifest = build_manifest(result)
        except OSError as error:
            raise InputProblem(f"No manifest.json beside {path}, and the files the report lists cannot be read "
                               f"to rebuild it ({type(error).__name__}).") from None
    thumbnails = folder / "thumbnails.png"
    try:
        evidence = read_evidence(folder)
    except ValueError as error:
        raise InputProblem(f"{error}; re-run extract-evidence with --out.") from None
    if evidence is not None and evidence.model_fingerprint != result.model.fingerprint:
        console.print(f"[yellow]warning:[/] {shown(folder / 'evidence.json')} searched another model than the "
                      "audit's; the report leaves it out.")
    return write_output_folder(result, manifest, out, formats,
                               thumbnails.read_bytes() if thumbnails.is_file() else thumbnail_strip(result), evidence)


def read_saved(model, path: Path, what: str, hint: str):
    """``path`` parsed as the pydantic ``model``; InputProblem (exit 3) with one sentence when it cannot be."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as error:
        raise InputProblem(f"{path} is not a readable cdi-audit {what} ({type(error).__name__}); {hint}.") from None


@guarded
def verify(
    folder: Annotated[Path, typer.Argument(
        metavar="DIR", show_default=False,
        help="An audit's output folder (holding manifest.json), or the manifest.json file itself.")],
    json_output: JsonOption = False,
) -> None:
    """Re-hash the files an audit read (its manifest) and say which still match, changed or are missing.

    Exit 0 when every file matches, 3 otherwise. Needs neither the model nor torch.
    """
    from cdi_audit.results.manifest import Manifest, verify_manifest

    console = stderr_console()
    path = folder / "manifest.json" if folder.is_dir() else folder
    manifest = read_saved(Manifest, path, "manifest", "give the folder an audit wrote with --out")
    outcome = run_stage(lambda progress: verify_manifest(manifest, progress.counter("re-hashing files"), path.parent),
                        console)
    for label, entries in (("changed", outcome.changed), ("missing", outcome.missing)):
        for entry in entries:
            console.print(f"[bold red]{label}[/] {entry.role} {shown(entry.path)}")
    summary = (f"{len(outcome.matched)} of {len(manifest.files)} files match the manifest"
               f" ({len(outcome.changed)} changed, {len(outcome.missing)} missing); set digest {manifest.digest[:16]}…")
    console.print(("[bold green]VERIFIED[/] " if outcome.all_match else "[bold red]NOT VERIFIED[/] ") + summary)
    if json_output:
        typer.echo(json.dumps({
            "verified": outcome.all_match, "digest": manifest.digest, "matched": len(outcome.matched),
            "changed": [entry.path for entry in outcome.changed], "missing": [entry.path for entry in outcome.missing],
        }, indent=2))
    raise typer.Exit(0 if outcome.all_match else int(ExitCode.INPUT_PROBLEM))
