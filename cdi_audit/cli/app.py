"""The Typer app and the one rule of its exit codes: only a completed audit exits 0 or 1.

Exit codes (a CI job can branch on them): 0 no evidence, 1 evidence, 2 usage
error, 3 input problem, 4 model cannot be loaded or run (out of memory
included), 5 inconclusive, 70 internal error (a bug; never a finding), 130
interrupted. Every command's whole body, writing its output files included, runs
inside ``guarded``, which maps every failure to one of 2-5, 70 or 130 with one
sentence; ``main`` catches what escapes even that (an option callback, Typer
itself).
"""

from __future__ import annotations

import functools
import gc
import json
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console

from cdi_audit.console import StageProgress, shown, stderr_console
from cdi_audit.errors import AuditError, ExitCode, InvalidSetting, brief, is_out_of_memory
from cdi_audit.report.files import output_errors, prepare_output_folder
from cdi_audit.version import __version__

OUT_OF_MEMORY = ("Ran out of memory ({kind}); use a smaller --batch-size (and --max-batch-grad), fewer images "
                 "at a time, or a machine with more memory.")
Result = TypeVar("Result")
# What a command raises to end itself with a chosen code (its verdict, or a usage error Typer prints itself).
_USAGE_ERROR = next(base for base in typer.BadParameter.__mro__ if base.__name__ == "ClickException")
OWN_EXITS = (typer.Exit, typer.Abort, _USAGE_ERROR)

app = typer.Typer(
    help="Test whether a diffusion model was trained on your images (CDI dataset inference).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cdi-audit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Test whether a diffusion model was trained on your images (CDI dataset inference).

    Exit codes: 0 no evidence, 1 evidence, 2 usage error, 3 input problem,
    4 model cannot be loaded or run, 5 inconclusive, 70 internal error.
    """


def _print_error(console: Console, message: str) -> None:
    console.print(f"[bold red]error:[/] {shown(message)}", soft_wrap=True)


def fail(console: Console, code: int, message: str, json_output: bool = False) -> NoReturn:
    """Say what went wrong in one line (and as JSON on stdout with --json), and exit with ``code``."""
    _print_error(console, message)
    if json_output:
        typer.echo(json.dumps({"error": {"exit_code": int(code), "message": message}}))
    raise typer.Exit(int(code))


# The options of settings fields whose names differ from ``--field-name``.
OPTION_NAMES = {"suspect_dir": "SUSPECT_DIR", "reference_dir": "--reference", "n_jobs": "--jobs",
                "control": "--control-model", "calibration": "--no-calibration", "members_dir": "--members",
                "nonmembers_dir": "--nonmembers", "tests": "--test", "use_cache": "--no-cache",
                "compile_network": "--compile", "adapters": "--adapter"}


def option_name(field: str) -> str:
    """The command-line option that sets a settings field."""
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


def _failure(error: BaseException) -> tuple[int, str]:
    """The exit code and the sentence for an exception that ended a command."""
    if isinstance(error, InvalidSetting):
        return error.exit_code, error.worded(option_name(error.field))
    if isinstance(error, AuditError):
        return error.exit_code, str(error)
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, ("Interrupted; features extracted so far (and completed endpoint calls) are "
                                      "cached, and a re-run resumes.")
    if is_out_of_memory(error):
        return ExitCode.MODEL_UNAVAILABLE, OUT_OF_MEMORY.format(kind=type(error).__name__)
    return ExitCode.INTERNAL_ERROR, f"Internal error ({brief(error)}); please report it, with the output of --debug."


def guarded(command: Callable[..., None]) -> Callable[..., None]:
    """Run a command's whole body under the exit-code rule: a verdict is only ever the command's own
    ``typer.Exit``; anything else becomes 2-5, 70 or 130 with one sentence (a traceback only with --debug).

    Out of memory, the traceback (which holds the frames, and so the arrays, that filled memory) is
    dropped before anything is printed, so that reporting the failure cannot fail again."""

    @functools.wraps(command)
    def run(*args, **kwargs) -> None:
        json_output, debug = bool(kwargs.get("json_output", False)), bool(kwargs.get("debug", False))
        try:
            command(*args, **kwargs)
            return
        except (*OWN_EXITS, SystemExit):
            raise
        except BaseException as error:  # noqa: B036 - the rule covers every failure, interrupts included
            code, message = _failure(error)
            if debug and not is_out_of_memory(error):
                stderr_console().print_exception(show_locals=False)
            traceback.clear_frames(error.__traceback__)
            del error
        gc.collect()
        fail(stderr_console(), code, message, json_output)

    return run


def run_stage(stage: Callable[[StageProgress], Result], console: Console) -> Result:
    """Run a long stage with its progress bars (errors are ``guarded``'s)."""
    with StageProgress(console) as progress:
        return stage(progress)


def prepare_out(out: Path | None, inputs: Iterable[tuple[str, Path | None]] = ()) -> None:
    """Check --out (when given) before any model work (``report.files.prepare_output_folder``)."""
    if out is not None:
        prepare_output_folder(out, inputs)


def write_outputs(write: Callable[[], list[Path]], out: Path, console: Console, finished: str) -> None:
    """Write a finished command's files and list them; a failure to write says that the work itself
    finished (``finished``: e.g. the verdict) but exits 2, never with a verdict's code."""
    with output_errors(out, finished):
        paths = write()
    for path in paths:
        console.print(f"[dim]wrote {shown(path)}[/]")


def main() -> None:
    """The console script: the app, with a last handler for anything that escapes a command's own."""
    try:
        app()
    except SystemExit:
        raise
    except BaseException as error:  # noqa: B036 - never let Python's own exit code 1 ("evidence") through
        code, message = _failure(error)
        traceback.clear_frames(error.__traceback__)
        del error
        gc.collect()
        try:
            _print_error(stderr_console(), message)
        finally:
            sys.exit(int(code))
