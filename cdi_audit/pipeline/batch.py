"""Many audits in one run (``cdi-audit batch audits.toml``): models loaded once, features shared through the
cache, p-values corrected for multiple testing together (protocol.md, Batch audits).

A batch file lists audits as ``[[audit]]`` tables; a ``[defaults]`` table gives values every audit takes
unless it sets its own. Relative paths are relative to the batch file's folder. A file with mistakes (an
unknown key, a missing or misspelt model path, a name used twice) is refused before any audit runs.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import stats

from cdi_audit.console import StageProgress
from cdi_audit.errors import VERDICT_EXIT_CODES, AuditError, InputProblem, SettingsProblem
from cdi_audit.models.adapters import Adapter
from cdi_audit.models.single_file import SHIPPED
from cdi_audit.models.spec import Machine, ModelSpec
from cdi_audit.pipeline.audit import AuditSettings, ModelPool, run_audit
from cdi_audit.pipeline.settings_checks import alpha_problem, permutations_problem
from cdi_audit.results.schema import CORRECTION_NAMES, AuditResult, BatchAudit, BatchResult, MultipleTesting

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Correction = Literal["bh", "holm", "none"]
CORRECTIONS: tuple[Correction, ...] = ("bh", "holm", "none")
PATH_KEYS = {"suspect": "suspect_dir", "reference": "reference_dir", "model": "model_path",
             "model_config": "model_config", "control_model": "control_model",
             "control_model_config": "control_model_config"}
VALUE_KEYS = {"features": str, "alpha": float, "test": str, "permutations": int, "seed": int,
              "shift_alpha": float, "curve_resamples": int, "caption": str, "access": str, "calibration": bool,
              "guidance": float}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Exit codes of failed audits are all more severe than any verdict's; among verdicts, inconclusive is the
# most severe, then evidence, then no evidence.
VERDICT_SEVERITY = {"no_evidence": 0, "evidence": 1, "inconclusive": 2}


@dataclass(frozen=True)
class BatchEntry:
    name: str
    settings: AuditSettings


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: the k-th smallest times (m - k + 1), made monotone, at most 1."""
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    stepped = np.maximum.accumulate(p_values[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def adjust_p_values(p_values: list[float], correction: Correction) -> list[float]:
    """Adjusted p-values for one family: Benjamini-Hochberg (false discovery rate, scipy), Holm (family-wise
    error rate) or none."""
    values = np.asarray(p_values, dtype=float)
    if correction == "none" or len(values) == 0:
        return [float(value) for value in values]
    adjusted = stats.false_discovery_control(values, method="bh") if correction == "bh" else holm(values)
    return [float(value) for value in adjusted]


def _resolve(key: str, value: str, folder: Path) -> Path:
    """A path from the batch file, relative to its folder; a bare config name (like 'stable-diffusion-v2')
    that is no file there stays a name."""
    path = Path(value).expanduser()
    if key.endswith("config") and "/" not in value and not (folder / path).exists():
        return path
    return folder / path  # an absolute path stays as it is


def _entry_settings(table: dict, where: str, folder: Path) -> dict:
    """The AuditSettings fields one table of the batch file sets, checked and with paths resolved."""
    values = {}
    for key, value in table.items():
        if key in PATH_KEYS:
            if not isinstance(value, str):
                raise SettingsProblem(f"{where}: {key} must be a path in quotes.")
            values[PATH_KEYS[key]] = _resolve(key, value, folder)
        elif key == "adapters":
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise SettingsProblem(f"{where}: adapters must be a list of paths in quotes (\"FILE\" or "
                                      "\"FILE:SCALE\").")
            parsed = [Adapter.parse(item) for item in value]
            values["adapters"] = tuple(Adapter(_resolve(key, str(a.path), folder), a.scale) for a in parsed)
        elif key in VALUE_KEYS:
            kind = VALUE_KEYS[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise SettingsProblem(f"{where}: {key} must be a {kind.__name__} (got {value!r}).")
            values[key] = value
        elif key != "name":
            known = ", ".join(sorted([*PATH_KEYS, *VALUE_KEYS, "adapters"]))
            raise SettingsProblem(f"{where}: unknown key {key!r}; the keys are name, {known}.")
    return values


def _audit_settings(values: dict, where: str) -> AuditSettings:
    """AuditSettings from a table's flat values: the model paths become model specs, the machine's options a
    ``Machine``."""
    values = dict(values)
    model = ModelSpec(values.pop("model_path"), values.pop("model_config", None), values.pop("adapters", ()),
                      values.pop("guidance", None))
    control_path, control_config = values.pop("control_model", None), values.pop("control_model_config", None)
    if control_config is not None and control_path is None:
        raise SettingsProblem(f"{where}: control_model_config is given without a control_model.")
    control = None if control_path is None else ModelSpec(control_path, control_config)
    if model.adapters and control is not None:
        raise SettingsProblem(f"{where}: with adapters the base (model) is the control model; leave control_model "
                              "out.")
    if not values.get("calibration", True) and not model.adapters:
        raise SettingsProblem(f"{where}: calibration applies to audits with adapters only.")
    machine = Machine(**{key: values.pop(key) for key in ("device", "dtype", "compile_network") if key in values})
    return AuditSettings(model=model, control=control, machine=machine, **values)


def _check_values(settings: AuditSettings, where: str) -> None:
    from cdi_audit.features.registry import resolve_extractors

    problem = alpha_problem(settings.alpha)
    if problem is None and settings.test == "permutation":
        problem = permutations_problem(settings.permutations, settings.alpha)
    if problem is not None:
        raise SettingsProblem(f"{where}: {problem}")
    if settings.test not in ("permutation", "split"):
        raise SettingsProblem(f"{where}: test must be 'permutation' or 'split' (got {settings.test!r}).")
    if settings.access not in ("auto", "blackbox"):
        raise SettingsProblem(f"{where}: access must be 'auto' or 'blackbox' (got {settings.access!r}).")
    try:
        resolve_extractors(settings.features)
    except ValueError as error:
        raise SettingsProblem(f"{where}: {error}") from None


def _check_model_paths(settings: AuditSettings, where: str) -> None:
    """Every model, control model and config path must exist (a config may instead name a shipped config):
    a typo would otherwise fail its audit with exit 4 after the others ran. The image folders are left to
    the audit: a missing one fails that audit alone (README, Many audits at once)."""
    hint = "correct it in the batch file (relative paths start at its folder)"
    specs = (("model", settings.model), ("control_model", settings.control))
    for key, spec in specs:
        if spec is not None and not Path(spec.path).exists():
            raise SettingsProblem(f"{where}: the {key} {spec.path} does not exist; {hint}.")
    for adapter in settings.model.adapters:
        if not adapter.path.is_file():
            raise SettingsProblem(f"{where}: the adapter {adapter.path} does not exist; {hint}.")
    for key, config in ((f"{key}_config", spec.config) for key, spec in specs if spec is not None):
        if config is None:
            continue
        if not Path(config).is_absolute() and str(config) not in SHIPPED:  # a bare name (see _resolve)
            raise SettingsProblem(f"{where}: the {key} {str(config)!r} is neither an existing path nor a shipped "
                                  f"config ({', '.join(SHIPPED)}); {hint}.")
        if Path(config).is_absolute() and not Path(config).exists():
            raise SettingsProblem(f"{where}: the {key} {config} does not exist; {hint}.")


def read_batch_file(path: Path, machine: dict | None = None) -> list[BatchEntry]:
    """The audits of a batch file, each as complete settings. ``machine`` gives the settings that belong to
    the command line (device, dtype, batch sizes, cache, jobs); the file's ``[defaults]`` and each
    ``[[audit]]`` give the rest, an audit's own values first."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputProblem(f"The batch file {path} does not exist.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SettingsProblem(f"The batch file {path} is not valid TOML: {error}") from None
    unknown = sorted(set(document) - {"defaults", "audit"})
    if unknown:
        raise SettingsProblem(f"{path}: unknown table(s) {', '.join(unknown)}; use [defaults] and [[audit]].")
    audits = document.get("audit", [])
    if not isinstance(audits, list) or not audits:
        raise SettingsProblem(f"{path} lists no audits; add [[audit]] tables with suspect, reference and model.")
    folder = path.resolve().parent
    defaults = _entry_settings(document.get("defaults", {}), f"{path} [defaults]", folder)
    base = dict(machine or {})
    entries, names, places = [], set(), []
    for index, table in enumerate(audits, start=1):
        name = str(table.get("name", f"audit-{index}"))
        where = f"{path} audit {index} ({name})"
        if not NAME_PATTERN.match(name):
            raise SettingsProblem(f"{where}: a name is a folder name for its output: letters, digits, '.', '_', "
                                  "'-'.")
        if name in names:
            raise SettingsProblem(f"{where}: the name {name!r} is used twice.")
        names.add(name)
        values = {**base, **defaults, **_entry_settings(table, where, folder)}
        missing = [key for key, field in (("suspect", "suspect_dir"), ("reference", "reference_dir"),
                                          ("model", "model_path")) if values.get(field) is None]
        if missing:
            raise SettingsProblem(f"{where}: missing {', '.join(missing)}.")
        settings = _audit_settings(values, where)
        _check_values(settings, where)
        entries.append(BatchEntry(name, settings))
        places.append(where)
    for entry, where in zip(entries, places, strict=True):  # after the file's own mistakes, so those come first
        _check_model_paths(entry.settings, where)
    return entries


def with_correction(result: AuditResult, adjusted: float, correction: Correction, family_size: int) -> AuditResult:
    """The audit's result as the batch reports it: the adjusted p-value decides between evidence and no
    evidence; an inconclusive result stays inconclusive."""
    record = MultipleTesting(correction=correction, family_size=family_size, adjusted_p_value=adjusted,
                             verdict_before=result.verdict)
    verdict, reason = result.verdict, result.verdict_reason
    correction_text = f"{CORRECTION_NAMES[correction]} correction over {family_size} audits"
    if result.verdict == "evidence" and adjusted >= result.alpha:
        verdict = "no_evidence"
        reason = (f"Significant alone (p = {result.p_value:.3g}), but not after the {correction_text} (adjusted "
                  f"p = {adjusted:.3g} >= alpha = {result.alpha}): no evidence at the batch's level. Alone: "
                  f"{result.verdict_reason}")
    elif result.verdict == "evidence" and correction != "none":
        reason = f"{reason} It stays significant after the {correction_text} (adjusted p = {adjusted:.3g})."
    return result.model_copy(update={"verdict": verdict, "verdict_reason": reason, "multiple_testing": record})


def batch_exit_code(audits: list[BatchAudit]) -> int:
    """The most severe outcome: any error (the highest of their codes), else inconclusive, evidence, none."""
    errors = [audit.exit_code for audit in audits if audit.verdict == "error"]
    if errors:
        return max(errors)
    worst = max(audits, key=lambda audit: VERDICT_SEVERITY[audit.verdict])
    return int(VERDICT_EXIT_CODES[worst.verdict])


def run_batch(
    entries: list[BatchEntry],
    batch_file: Path,
    correction: Correction,
    progress: StageProgress | None = None,
    on_start: Callable[[int, BatchEntry], None] | None = None,
    models: ModelPool | None = None,
) -> BatchResult:
    """Run every audit (grouped by model, so each model is loaded once), then correct the p-values of the
    audits that have one together. A failed audit is recorded with its exit code; the others go on."""
    progress = progress or StageProgress()
    models = models or ModelPool()
    by_model = sorted(range(len(entries)), key=lambda i: (str(entries[i].settings.model.path),
                                                          str(getattr(entries[i].settings.control, "path", ""))))
    outcomes: dict[int, AuditResult | AuditError] = {}
    for position, index in enumerate(by_model, start=1):
        if on_start is not None:
            on_start(position, entries[index])
        try:
            outcomes[index] = run_audit(entries[index].settings, progress, models)
        except AuditError as error:
            outcomes[index] = error
    family = [i for i, outcome in sorted(outcomes.items())
              if isinstance(outcome, AuditResult) and outcome.p_value is not None]
    adjusted = dict(zip(family, adjust_p_values([outcomes[i].p_value for i in family], correction), strict=True))
    audits = []
    for index, entry in enumerate(entries):
        outcome = outcomes[index]
        if isinstance(outcome, AuditError):
            audits.append(BatchAudit(name=entry.name, verdict="error", exit_code=int(outcome.exit_code),
                                     p_value=None, adjusted_p_value=None, error=str(outcome)))
            continue
        if index in adjusted:
            outcome = with_correction(outcome, adjusted[index], correction, len(family))
        audits.append(BatchAudit(name=entry.name, verdict=outcome.verdict,
                                 exit_code=int(VERDICT_EXIT_CODES[outcome.verdict]), p_value=outcome.p_value,
                                 adjusted_p_value=adjusted.get(index), result=outcome))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return BatchResult(batch_file=str(batch_file), correction=correction, family_size=len(family),
                       exit_code=batch_exit_code(audits), created=created, audits=audits)
