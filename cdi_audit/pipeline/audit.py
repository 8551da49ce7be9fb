"""One audit, stage by stage: images -> model -> features -> test and controls -> AuditResult.

``run_audit`` orders the stages; each lives in its own module (``inputs``, ``model_features``, ``control``,
``result``). ``decision.decide`` turns a feature table into a verdict without touching the model, so the
statistics can be rerun (and tested) from saved features.
"""

from __future__ import annotations

from cdi_audit.console import StageProgress, timed
from cdi_audit.features.table import calibrated
from cdi_audit.pipeline.control import extract_with_control
from cdi_audit.pipeline.inputs import gather_images
from cdi_audit.pipeline.model_features import ModelPool, conditions_seen, extract_opened, open_model
from cdi_audit.pipeline.result import audit_result, control_model_result
from cdi_audit.pipeline.settings import AuditSettings
from cdi_audit.results.schema import AuditResult
from cdi_audit.verdict.control_model import judge_with_control
from cdi_audit.verdict.controls import shift_check
from cdi_audit.verdict.decision import decide


def run_audit(settings: AuditSettings, progress: StageProgress | None = None,
              models: ModelPool | None = None) -> AuditResult:
    """Run one audit end to end. Raises ``AuditError`` subclasses for inputs or models it cannot use.
    ``models`` reuses models loaded by earlier audits (batches)."""
    progress = progress or StageProgress()
    timings: dict[str, float] = {}
    with timed(timings, "scan"):
        inputs = gather_images(settings, progress)
    opened = open_model(settings, [inputs.suspect, inputs.reference], progress, timings, models=models)
    with timed(timings, "shift_check"):
        shift = shift_check(inputs.screened.screen.suspect, inputs.screened.screen.reference,
                            settings.shift_alpha, settings.seed, settings.permutations, settings.n_jobs,
                            progress.counter("shift check (image statistics)"), conditions=conditions_seen(opened))
    extracted = extract_opened(settings, opened, progress, timings)
    table = extracted.table
    suspect, reference = extracted.image_sets
    control_features = control_decision = None
    if settings.control_model is not None:
        control_features = extract_with_control(settings, extracted, [inputs.suspect, inputs.reference], progress,
                                                timings, models)
        control_suspect, control_reference = control_features.image_sets
        with timed(timings, "control_test"):
            control_decision = decide(control_features.table, control_suspect.keys, control_reference.keys,
                                      alpha=settings.alpha, test=settings.test, seed=settings.seed,
                                      permutations=settings.permutations, n_jobs=settings.n_jobs,
                                      progress=progress, curve_resamples=0)
        if settings.calibrated:
            table = calibrated(table, control_features.table)
    with timed(timings, "test"):
        decision = decide(table, suspect.keys, reference.keys, alpha=settings.alpha, test=settings.test,
                          seed=settings.seed, permutations=settings.permutations, n_jobs=settings.n_jobs,
                          progress=progress, curve_resamples=settings.curve_resamples, shift=shift,
                          calibrated=settings.calibrated)
    control_model = None
    if control_features is not None:
        decision, comparison = judge_with_control(decision, control_decision, settings.alpha, settings.seed,
                                                  against_base=settings.control_is_base)
        control_model = control_model_result(comparison, control_features)
        extracted.notes.extend(f"{settings.control_label}: {note}" for note in control_features.notes)
    return audit_result(settings, inputs, extracted, decision, shift, control_model, timings)
