"""The library's entry points, as a script or a notebook calls them: ``audit`` and ``evaluate``.

Each takes the command line's options as keyword arguments with the same defaults (read from the settings
objects, which check every value when they are made: the command line, batch files and these share one rule
book) and returns the result with the files it writes. ``cdi-audit check`` and ``cdi-audit evaluate`` are thin
layers over these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, PrivateAttr

from cdi_audit.blackbox.endpoints import EndpointSettings
from cdi_audit.console import StageProgress, stderr_console
from cdi_audit.models.adapters import Adapter
from cdi_audit.models.spec import Machine, ModelSpec
from cdi_audit.pipeline.evaluate import EvaluationSettings, run_evaluation
from cdi_audit.pipeline.settings import AuditSettings
from cdi_audit.report.files import (
    REPORT_FORMATS,
    output_errors,
    prepare_output_folder,
    write_audit_files,
    write_evaluation_files,
)
from cdi_audit.results import schema
from cdi_audit.rules import DEFAULT_JOBS, require

Progress = bool | StageProgress


class AuditResult(schema.AuditResult):
    """One audit's result: what ``report.json`` holds, with its verdict's exit code and the files it writes."""

    _written: list[Path] = PrivateAttr(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 no evidence, 1 evidence, 5 inconclusive: what ``cdi-audit check`` exits with."""
        return int(self.verdict.exit_code)

    @property
    def written(self) -> list[Path]:
        """The files the last ``write`` (or ``audit(out=...)``) wrote, manifest.json last."""
        return list(self._written)

    def write(self, out: str | Path, *, reports: Sequence[str] = REPORT_FORMATS) -> list[Path]:
        """Write the audit's files into ``out`` (created when missing): report.json, scores.csv, the figures,
        the ``reports`` ("html", "pdf") and last manifest.json, which ``cdi-audit verify`` checks. Returns their
        paths; raises ``OutputProblem`` when the folder cannot hold them."""
        folder = Path(out)
        prepare_output_folder(folder, _audit_inputs(self.suspect_dir, self.reference_dir))
        with output_errors(folder, f"The audit finished ({self.verdict})"):
            self._written = write_audit_files(self, folder, tuple(reports))
        return self.written


class EvaluationResult(schema.EvaluationResult):
    """An evaluation's result (``evaluation.json``), with the files it writes."""

    _written: list[Path] = PrivateAttr(default_factory=list)

    @property
    def written(self) -> list[Path]:
        """The files the last ``write`` (or ``evaluate(out=...)``) wrote."""
        return list(self._written)

    def write(self, out: str | Path) -> list[Path]:
        """Write evaluation.json and the p-value curves' plot into ``out``; returns their paths."""
        folder = Path(out)
        prepare_output_folder(folder, _evaluation_inputs(self.members_dir, self.nonmembers_dir))
        with output_errors(folder, "The evaluation finished"):
            self._written = write_evaluation_files(self, folder)
        return self.written


def audit(
    suspect: str | Path,
    reference: str | Path,
    model: str | Path | ModelSpec | None = None,
    *,
    endpoint: str | EndpointSettings | None = None,
    model_config: str | Path | None = None,
    adapters: Sequence[str | Adapter] = (),
    guidance: float | None = None,
    allow_pickle: bool = False,
    features: str = AuditSettings.features,
    alpha: float = AuditSettings.alpha,
    test: str = AuditSettings.test,
    permutations: int = AuditSettings.permutations,
    seed: int = AuditSettings.seed,
    shift_alpha: float = AuditSettings.shift_alpha,
    curve_resamples: int = AuditSettings.curve_resamples,
    control: str | Path | ModelSpec | None = None,
    control_config: str | Path | None = None,
    calibration: bool = AuditSettings.calibration,
    access: str = AuditSettings.access,
    caption: str | None = AuditSettings.caption,
    device: str = Machine.device,
    dtype: str = Machine.dtype,
    compile_network: bool = Machine.compile_network,
    batch_size: int = AuditSettings.batch_size,
    max_batch_grad: int = AuditSettings.max_batch_grad,
    cache_dir: str | Path | None = AuditSettings.cache_dir,
    use_cache: bool = AuditSettings.use_cache,
    strict: bool = AuditSettings.strict,
    jobs: int = DEFAULT_JOBS,
    out: str | Path | None = None,
    reports: Sequence[str] = REPORT_FORMATS,
    progress: Progress = False,
) -> AuditResult:
    """Audit ``model`` (a pipeline folder or single-file checkpoint, or ``endpoint``: an image-to-image URL or
    an ``EndpointSettings``) with the ``suspect`` folder (published images) against the ``reference`` folder
    (unpublished ones). The options are ``cdi-audit check``'s (``cdi-audit check --help``), by their Python
    names. ``out``: a folder to write the audit's files into (``AuditResult.write``), checked before any model
    work. ``progress=True`` shows progress bars on stderr. Raises an ``AuditError`` (``InvalidSetting`` for a
    value out of range, ``InputProblem``, ``ModelUnavailable``, ``OutputProblem``, ...) when it cannot give a
    verdict or write it."""
    from cdi_audit.pipeline.audit import run_audit

    settings = AuditSettings(
        suspect_dir=Path(suspect), reference_dir=Path(reference),
        model=model_spec(model, config=model_config, adapters=adapters, guidance=guidance, allow_pickle=allow_pickle),
        endpoint=EndpointSettings(url=endpoint) if isinstance(endpoint, str) else endpoint,
        control=model_spec(control, config=control_config, field="control"),
        features=features, alpha=alpha, test=test, permutations=permutations, seed=seed, shift_alpha=shift_alpha,
        curve_resamples=curve_resamples, calibration=calibration, access=access, caption=caption,
        **_machine_and_cache(device, dtype, compile_network, batch_size, max_batch_grad, cache_dir, use_cache,
                             strict, jobs),
    )
    if out is not None:  # checked before any model work, and written only once the audit is done
        prepare_output_folder(Path(out), _audit_inputs(settings.suspect_dir, settings.reference_dir))
    with _progress(progress) as stages:
        result = _with_methods(AuditResult, run_audit(settings, stages))
    if out is not None:
        result.write(out, reports=reports)
    return result


def evaluate(
    members: str | Path,
    nonmembers: str | Path,
    model: str | Path | ModelSpec,
    *,
    model_config: str | Path | None = None,
    adapters: Sequence[str | Adapter] = (),
    guidance: float | None = None,
    allow_pickle: bool = False,
    features: str = EvaluationSettings.features,
    repeats: int = EvaluationSettings.repeats,
    tests: Sequence[str] = EvaluationSettings.tests,
    permutations: int = EvaluationSettings.permutations,
    alpha: float = EvaluationSettings.alpha,
    seed: int = EvaluationSettings.seed,
    calibration: bool = EvaluationSettings.calibration,
    access: str = EvaluationSettings.access,
    caption: str | None = EvaluationSettings.caption,
    device: str = Machine.device,
    dtype: str = Machine.dtype,
    compile_network: bool = Machine.compile_network,
    batch_size: int = EvaluationSettings.batch_size,
    max_batch_grad: int = EvaluationSettings.max_batch_grad,
    cache_dir: str | Path | None = EvaluationSettings.cache_dir,
    use_cache: bool = EvaluationSettings.use_cache,
    strict: bool = EvaluationSettings.strict,
    jobs: int = DEFAULT_JOBS,
    out: str | Path | None = None,
    progress: Progress = False,
) -> EvaluationResult:
    """Measure detection power on ``model``, whose training ``members`` (a folder) and ``nonmembers`` are known:
    ``cdi-audit evaluate``'s options by their Python names; ``out``: a folder for evaluation.json and its plot."""
    settings = EvaluationSettings(
        members_dir=Path(members), nonmembers_dir=Path(nonmembers),
        model=model_spec(model, config=model_config, adapters=adapters, guidance=guidance, allow_pickle=allow_pickle),
        features=features, repeats=repeats, tests=tuple(dict.fromkeys(tests)), permutations=permutations,
        alpha=alpha, seed=seed, calibration=calibration, access=access, caption=caption,
        **_machine_and_cache(device, dtype, compile_network, batch_size, max_batch_grad, cache_dir, use_cache,
                             strict, jobs),
    )
    if out is not None:
        prepare_output_folder(Path(out), _evaluation_inputs(settings.members_dir, settings.nonmembers_dir))
    with _progress(progress) as stages:
        result = _with_methods(EvaluationResult, run_evaluation(settings, stages))
    if out is not None:
        result.write(out)
    return result


def model_spec(model: str | Path | ModelSpec | None, *, config: str | Path | None = None,
               adapters: Sequence[str | Adapter] = (), guidance: float | None = None, allow_pickle: bool = False,
               field: str = "model") -> ModelSpec | None:
    """The model a path and its options name (adapters as ``FILE`` or ``FILE:SCALE``; ``ModelSpec.named``); a
    ``ModelSpec`` is taken as it is and carries its own options."""
    parsed = tuple(a if isinstance(a, Adapter) else Adapter.parse(str(a), allow_pickle) for a in adapters)
    if isinstance(model, ModelSpec):
        given = [name for name, value in (("model_config", config), ("adapters", parsed), ("guidance", guidance))
                 if value not in (None, ())]
        require(not given, given[0] if given else field, f"is given beside a {field} that is a ModelSpec, which "
                                                         "holds it already.")
        return model
    return ModelSpec.named(model, config=config, adapters=parsed, guidance=guidance)


def _audit_inputs(suspect: str | Path, reference: str | Path) -> list[tuple[str, Path]]:
    """An audit's input folders, which its output folder must not lie in, as a refusal names them."""
    return [("the suspect folder", Path(suspect)), ("the reference folder", Path(reference))]


def _evaluation_inputs(members: str | Path, nonmembers: str | Path) -> list[tuple[str, Path]]:
    return [("the members folder", Path(members)), ("the non-members folder", Path(nonmembers))]


def _machine_and_cache(device: str, dtype: str, compile_network: bool, batch_size: int, max_batch_grad: int,
                       cache_dir: str | Path | None, use_cache: bool, strict: bool, jobs: int) -> dict:
    """The ``ModelSettings`` fields both entry points share, by their field names."""
    return {"machine": Machine(device, dtype, compile_network), "batch_size": batch_size,
            "max_batch_grad": max_batch_grad, "cache_dir": None if cache_dir is None else Path(cache_dir),
            "use_cache": use_cache, "strict": strict, "n_jobs": jobs}


Result = TypeVar("Result", AuditResult, EvaluationResult)


def _with_methods(cls: type[Result], result: BaseModel) -> Result:
    """``result`` as ``cls`` (its subclass here, with ``write``), sharing its fields: nothing is validated again."""
    return cls.model_construct(result.model_fields_set, **dict(result))


@contextlib.contextmanager
def _progress(progress: Progress) -> Iterator[StageProgress]:
    """The caller's progress bars, bars on stderr (True), or none (False)."""
    if isinstance(progress, StageProgress):
        yield progress
        return
    with StageProgress(stderr_console() if progress else None) as stages:
        yield stages

