"""Many audits in one run (``cdi-audit batch audits.toml``): models loaded once, features shared through the
cache, p-values corrected for multiple testing together (docs/batch.md).

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
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy import stats

from cdi_audit.console import StageProgress
from cdi_audit.errors import AuditError, InputProblem, InvalidSetting, SettingsProblem
from cdi_audit.models.adapters import Adapter
from cdi_audit.models.single_file import SHIPPED
from cdi_audit.models.spec import Machine, ModelSpec
from cdi_audit.pipeline.audit import run_audit
from cdi_audit.pipeline.model_features import ModelPool
from cdi_audit.pipeline.settings import AuditSettings
from cdi_audit.results.schema import AuditResult, BatchAudit, BatchResult, MultipleTesting
from cdi_audit.verdict.decision import after_correction

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Correction = Literal["bh", "holm", "none"]
CORRECTIONS: tuple[Correction, ...] = ("bh", "holm", "none")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# The batch file's path keys, and the values they become on their way to the settings.
PATH_FIELDS = {"suspect": "suspect_dir", "reference": "reference_dir", "model": "model_path",
               "model_config": "model_config", "control_model": "control_model",
               "control_model_config": "control_model_config"}
# What a batch file calls the settings' fields, where the names differ; the machine's settings come from the
# command line and are named as its options.
BATCH_KEYS = {"suspect_dir": "suspect", "reference_dir": "reference", "control": "control_model",
              "adapter": "adapters", "cache_dir": "--cache-dir", "batch_size": "--batch-size",
              "max_batch_grad": "--max-batch-grad", "n_jobs": "--jobs", "device": "--device", "dtype": "--dtype"}
TYPE_WORDS = {"string_type": "must be text in quotes", "int_type": "must be a whole number",
              "float_type": "must be a number", "bool_type": "must be true or false",
              "list_type": "must be a list", "dict_type": "must be a table", "model_type": "must be a table"}
# A file nested deeper than this is no batch file; Python's TOML reader would exhaust its recursion first.
MAX_NESTING = 64


class AuditTable(BaseModel):
    """One ``[[audit]]`` table, or ``[defaults]``: the keys a batch file may set, with their types. Their
    ranges are the rule book's (``pipeline/settings.py``), checked when the table becomes ``AuditSettings``."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    name: str | None = None
    suspect: str | None = None
    reference: str | None = None
    model: str | None = None
    model_config_path: str | None = Field(None, alias="model_config")
    control_model: str | None = None
    control_model_config: str | None = None
    adapters: list[str] | None = None  # "FILE" or "FILE:SCALE"
    features: str | None = None
    alpha: float | None = None
    test: str | None = None
    permutations: int | None = None
    seed: int | None = None
    shift_alpha: float | None = None
    curve_resamples: int | None = None
    caption: str | None = None
    access: str | None = None
    calibration: bool | None = None
    guidance: float | None = None


class BatchFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    defaults: AuditTable = AuditTable()
    audit: list[AuditTable] = []


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


def _nesting(value: object, depth: int = 0) -> int:
    """How deep tables and lists nest in a parsed document (stops counting past MAX_NESTING)."""
    if depth > MAX_NESTING or not isinstance(value, (dict, list)):
        return depth
    children = value.values() if isinstance(value, dict) else value
    return max((_nesting(child, depth + 1) for child in children), default=depth)


def _parse(path: Path) -> BatchFile:
    """The file parsed by the batch schema: TOML syntax, table names, keys and their types."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputProblem(f"The batch file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputProblem(f"The batch file {path} cannot be read as UTF-8 text ({type(error).__name__}).") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SettingsProblem(f"The batch file {path} is not valid TOML: {error}") from None
    except RecursionError:
        document = None
    if document is None or _nesting(document) > MAX_NESTING:
        raise SettingsProblem(f"The batch file {path} nests tables or lists more than {MAX_NESTING} deep; a batch "
                              "file is [defaults] and [[audit]] tables of plain values.")
    try:
        return BatchFile.model_validate(document)
    except ValidationError as error:
        raise SettingsProblem(_schema_problem(path, document, error.errors()[0])) from None


def _schema_problem(path: Path, document: dict, error: dict) -> str:
    """One sentence for the first schema error: the file, the table (audit number and name), the key."""
    location = list(error["loc"])
    table = location.pop(0)
    where = f"{path} [defaults]" if table == "defaults" else f"{path}"
    if table == "audit" and location and isinstance(location[0], int):
        index = location.pop(0)
        entry = document["audit"][index]
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"{path} audit {index + 1} ({name if isinstance(name, str) else f'audit-{index + 1}'})"
    if error["type"] == "extra_forbidden":
        if len(location) == 0:  # an unknown top-level table
            return f"{path}: unknown table {table!r}; use [defaults] and [[audit]]."
        known = ", ".join(AuditTable.model_json_schema(by_alias=True)["properties"])
        return f"{where}: unknown key {location[0]!r}; the keys are {known}."
    key = ".".join(str(part) for part in location) or table
    if not location and table == "audit":
        return f"{path}: audit must be [[audit]] tables (got {type(error['input']).__name__})."
    words = TYPE_WORDS.get(error["type"], error["msg"].lower())
    return f"{where}: {key} {words} (got {error['input']!r})."


def _table_values(table: AuditTable, folder: Path) -> dict:
    """The AuditSettings fields one table sets, with paths resolved against the batch file's folder and the
    adapters parsed."""
    values = {}
    for key, value in table.model_dump(exclude_unset=True, by_alias=True).items():
        if key in PATH_FIELDS:
            values[PATH_FIELDS[key]] = _resolve(key, value, folder)
        elif key == "adapters":
            values["adapters"] = tuple(Adapter.parse(str(_resolve(key, text, folder))) for text in value)
        elif key != "name":
            values[key] = value
    return values


def _audit_settings(values: dict) -> AuditSettings:
    """AuditSettings from a table's flat values: the model paths become model specs, the machine's options a
    ``Machine``; every range is checked there."""
    values = dict(values)
    model = ModelSpec(values.pop("model_path"), values.pop("model_config", None), values.pop("adapters", ()),
                      values.pop("guidance", None))
    control_path, control_config = values.pop("control_model", None), values.pop("control_model_config", None)
    if control_config is not None and control_path is None:
        raise SettingsProblem("control_model_config is given without a control_model.")
    control = None if control_path is None else ModelSpec(control_path, control_config)
    machine = Machine(**{key: values.pop(key) for key in ("device", "dtype", "compile_network") if key in values})
    return AuditSettings(model=model, control=control, machine=machine, **values)


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
        if adapter.path.is_dir():
            raise SettingsProblem(f"{where}: the adapter {adapter.path} is a folder; give the adapter's .safetensors "
                                  "file.")
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


def _entry(table: AuditTable, index: int, defaults: dict, base: dict, folder: Path, path: Path) -> BatchEntry:
    """One audit of the file as complete settings: the command line's machine settings, then the file's
    defaults, then the audit's own values."""
    name = table.name if table.name is not None else f"audit-{index}"
    where = f"{path} audit {index} ({name})"
    if not NAME_PATTERN.match(name):
        raise SettingsProblem(f"{where}: a name is a folder name for its output: letters, digits, '.', '_', '-'.")
    try:
        values = {**base, **defaults, **_table_values(table, folder)}
        missing = [key for key, field in (("suspect", "suspect_dir"), ("reference", "reference_dir"),
                                          ("model", "model_path")) if values.get(field) is None]
        if missing:
            raise SettingsProblem(f"missing {', '.join(missing)}.")
        return BatchEntry(name, _audit_settings(values))
    except InvalidSetting as error:
        raise SettingsProblem(f"{where}: {error.worded(BATCH_KEYS.get(error.field, error.field))}") from None
    except SettingsProblem as error:
        raise SettingsProblem(f"{where}: {error}") from None


def read_batch_file(path: Path, machine: dict | None = None) -> list[BatchEntry]:
    """The audits of a batch file, each as complete settings. ``machine`` gives the settings that belong to
    the command line (device, dtype, batch sizes, cache, jobs); the file's ``[defaults]`` and each
    ``[[audit]]`` give the rest, an audit's own values first."""
    parsed = _parse(path)
    if not parsed.audit:
        raise SettingsProblem(f"{path} lists no audits; add [[audit]] tables with suspect, reference and model.")
    folder = path.resolve().parent
    try:
        defaults = _table_values(parsed.defaults, folder)
    except InvalidSetting as error:
        raise SettingsProblem(f"{path} [defaults]: {error.worded(BATCH_KEYS.get(error.field, error.field))}") from None
    entries: list[BatchEntry] = []
    for index, table in enumerate(parsed.audit, start=1):
        entry = _entry(table, index, defaults, dict(machine or {}), folder, path)
        if entry.name in {earlier.name for earlier in entries}:
            raise SettingsProblem(f"{path} audit {index} ({entry.name}): the name {entry.name!r} is used twice.")
        entries.append(entry)
    for index, entry in enumerate(entries, start=1):  # after the file's own mistakes, so those come first
        _check_model_paths(entry.settings, f"{path} audit {index} ({entry.name})")
    return entries


def with_correction(result: AuditResult, adjusted: float, correction: Correction, family_size: int) -> AuditResult:
    """The audit's result as the batch reports it: the adjusted p-value decides between evidence and no
    evidence; an inconclusive result stays inconclusive."""
    record = MultipleTesting(correction=correction, family_size=family_size, adjusted_p_value=adjusted,
                             verdict_before=result.verdict)
    verdict, reason = after_correction(result.verdict, result.verdict_reason, p_value=result.p_value,
                                       adjusted_p_value=adjusted, alpha=result.alpha, correction=correction,
                                       family_size=family_size)
    return result.model_copy(update={"verdict": verdict, "verdict_reason": reason, "multiple_testing": record})


def batch_exit_code(audits: list[BatchAudit]) -> int:
    """The most severe outcome: any error (the highest of their codes; a failed audit is more severe than any
    verdict), else the exit code of the most severe verdict (``Verdict.severity``)."""
    errors = [audit.exit_code for audit in audits if audit.verdict == "error"]
    if errors:
        return max(errors)
    worst = max((audit.verdict for audit in audits), key=lambda verdict: verdict.severity)
    return int(worst.exit_code)


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
                                 exit_code=int(outcome.verdict.exit_code), p_value=outcome.p_value,
                                 adjusted_p_value=adjusted.get(index), result=outcome))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return BatchResult(batch_file=str(batch_file), correction=correction, family_size=len(family),
                       exit_code=batch_exit_code(audits), created=created, audits=audits)
