"""``cdi-audit batch``: many audits from one TOML file, corrected for multiple testing together."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cdi_audit.cli.app import guarded, prepare_out, run_stage, write_outputs
from cdi_audit.cli.options import (
    DEFAULT_JOBS,
    BatchSizeOption,
    CacheDirOption,
    CompileOption,
    DebugOption,
    DeviceOption,
    DtypeOption,
    JobsOption,
    JsonOption,
    MaxBatchGradOption,
    NoCacheOption,
    StrictOption,
    check_report_formats,
    report_formats_of,
    require_out_for_reports,
)
from cdi_audit.console import shown, stderr_console


class CorrectionChoice(str, Enum):
    bh = "bh"
    holm = "holm"
    none = "none"


@guarded
def batch(
    batch_file: Annotated[Path, typer.Argument(
        metavar="AUDITS.toml", show_default=False,
        help="The audits to run: [[audit]] tables with name, suspect, reference, model and optionally "
             "control_model, features, alpha, test, permutations, seed, shift_alpha, curve_resamples, caption, "
             "access, model_config, adapters (a list of \"FILE\" or \"FILE:SCALE\"; the base is then the control) "
             "and calibration (true by default; false scores the adapted model's features themselves); a "
             "[defaults] table gives values to all. Paths are relative to the file.")],
    correction: Annotated[CorrectionChoice, typer.Option(
        help="Correction for testing many audits at once: 'bh' (Benjamini-Hochberg, false discovery rate), "
             "'holm' (family-wise error rate) or 'none'. An audit is evidence only if its adjusted p < alpha.")
    ] = CorrectionChoice.bh,
    out: Annotated[Path | None, typer.Option(
        metavar="DIR", show_default=False,
        help="Write batch.json and one folder per audit (named after it) with its report files, as check "
             "--out does.")] = None,
    report_formats: Annotated[str | None, typer.Option(
        "--report", metavar="FORMATS", callback=check_report_formats, show_default=False,
        help="Reports to render into each audit's folder: 'pdf,html' (the default), 'pdf', 'html' or 'none'.")
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    compile_network: CompileOption = False,
    batch_size: BatchSizeOption = 32,
    max_batch_grad: MaxBatchGradOption = 16,
    cache_dir: CacheDirOption = None,
    no_cache: NoCacheOption = False,
    json_output: JsonOption = False,
    strict: StrictOption = False,
    jobs: JobsOption = DEFAULT_JOBS,
    debug: DebugOption = False,
) -> None:
    """Run many audits (collections against models), corrected for multiple testing together.

    Models are loaded once and features are shared through the cache. The exit code is the most severe of
    the audits': an error's code (the highest), else 5 if any is inconclusive, 1 if any is evidence, else 0.
    """
    from cdi_audit.pipeline.batch import read_batch_file, run_batch
    from cdi_audit.report.terminal import print_batch_summary

    console = stderr_console()
    require_out_for_reports(report_formats, out)
    formats = report_formats_of(report_formats)
    machine = dict(device=device, dtype=dtype, compile_network=compile_network, batch_size=batch_size,
                   max_batch_grad=max_batch_grad,
                   cache_dir=cache_dir, use_cache=not no_cache, strict=strict, n_jobs=jobs)
    entries = read_batch_file(batch_file, machine)
    prepare_out(out, [(f"the {role} folder of audit {entry.name}", folder) for entry in entries
                      for role, folder in (("suspect", entry.settings.suspect_dir),
                                           ("reference", entry.settings.reference_dir))])

    def announce(position: int, entry) -> None:
        console.print(f"[bold]audit {position}/{len(entries)}[/] {shown(entry.name)}: "
                      f"{shown(entry.settings.suspect_dir)} against {shown(entry.settings.reference_dir)}, "
                      f"model {shown(entry.settings.model.path)}")

    outcome = run_stage(lambda progress: run_batch(entries, batch_file, correction.value, progress, announce),
                        console)
    if out is not None:
        from cdi_audit.report.files import write_audit_files, write_file

        def write() -> list[Path]:
            written = [write_file(out / "batch.json", outcome.model_dump_json(indent=2) + "\n")]
            for audit in outcome.audits:
                if audit.result is not None:
                    written += write_audit_files(audit.result, out / audit.name, formats)
            return written

        write_outputs(write, out, console, f"The batch finished (exit code {outcome.exit_code})")
    print_batch_summary(outcome, console)
    if json_output:
        typer.echo(outcome.model_dump_json(indent=2))
    raise typer.Exit(outcome.exit_code)
