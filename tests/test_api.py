"""The Python API: the docs' notebook example runs as written, every option of ``check`` is a keyword of
``audit`` with the same default, and ``import cdi_audit`` stays light."""

from __future__ import annotations

import doctest
import enum
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import cdi_audit
from cdi_audit.api import audit, evaluate, model_spec
from cdi_audit.blackbox.endpoints import EndpointSettings
from cdi_audit.cli import app
from cdi_audit.errors import InvalidSetting, OutputProblem

REPO = Path(__file__).resolve().parents[1]
# Options of the command line that have no keyword: what to print and where to write (``AuditResult.write``).
COMMAND_LINE_ONLY = {"out", "report_formats", "json_output", "debug"}
# Command-line name -> keyword of ``audit`` (a leading "!" where the option is the keyword's negation).
RENAMED = {"suspect_dir": "suspect", "adapter": "adapters", "no_cache": "!use_cache",
           "no_calibration": "!calibration", "control_model": "control", "control_model_config": "control_config"}
# Command-line name -> field of ``EndpointSettings``, which ``audit(endpoint=...)`` takes.
ENDPOINT_FIELDS = {"endpoint_cmd": "command", "header": "headers", "endpoint_timeout": "timeout",
                   "retries": "retries", "retry_backoff": "backoff", "max_rps": "max_rps", "image_size": "image_size",
                   "endpoint_family": "family", "endpoint_conditioning": "conditioning"}


def test_the_api_guide_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/api.md's examples, run as doctests from a folder beside the shipped sample: the verdict, p-value,
    AUC, columns, the files written and the refusal all come out as printed there."""
    (tmp_path / "sample_data").symlink_to(REPO / "sample_data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("cdi_audit.cache.default_cache_dir", lambda: tmp_path / "cache")
    failures, tried = doctest.testfile(str(REPO / "docs" / "api.md"), module_relative=False, verbose=False,
                                       optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried >= 7 and failures == 0
    written = sorted(path.name for path in (tmp_path / "audit-out").iterdir())
    assert {"report.json", "scores.csv", "report.html", "manifest.json"} <= set(written)
    assert "report.pdf" not in written


def _plain(value: object) -> object:
    return value.value if isinstance(value, enum.Enum) else value


def test_every_check_option_is_a_keyword_of_audit_with_the_same_default() -> None:
    command = typer.main.get_command(app).commands["check"]
    keywords = inspect.signature(audit).parameters
    endpoint_defaults = {name: field.default for name, field in EndpointSettings.__dataclass_fields__.items()}
    for option in command.params:
        name = option.name
        if name in COMMAND_LINE_ONLY:
            continue
        default = _plain(option.default)
        if name in ENDPOINT_FIELDS:
            expected = endpoint_defaults[ENDPOINT_FIELDS[name]]
            assert default == expected or (default is None and expected == ()), name
            continue
        keyword = RENAMED.get(name, name).lstrip("!")
        assert keyword in keywords, f"--{name.replace('_', '-')} has no keyword {keyword!r} in audit()"
        parameter = keywords[keyword]
        if name in ("suspect_dir", "reference", "model"):
            continue  # the folders and the model are positional
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, keyword
        wanted = (not default) if RENAMED.get(name, "").startswith("!") else default
        if wanted is None and parameter.default == ():
            continue  # a repeatable option left out
        assert parameter.default == wanted, (name, parameter.default, wanted)


def test_options_without_a_model_are_refused_by_their_python_names(tmp_path: Path) -> None:
    with pytest.raises(InvalidSetting) as refused:
        model_spec(None, adapters=["style.safetensors"])
    assert refused.value.field == "adapters" and "endpoint serves its own model" in str(refused.value)
    spec = model_spec(REPO / "sample_data" / "model")
    assert model_spec(spec) is spec
    with pytest.raises(InvalidSetting) as refused:
        model_spec(spec, guidance=2.0)
    assert refused.value.field == "guidance" and "holds it already" in str(refused.value)
    with pytest.raises(InvalidSetting, match="alpha must be a number between 0 and 0.5"):
        audit(tmp_path, tmp_path, REPO / "sample_data" / "model", alpha=0.7)
    with pytest.raises(InvalidSetting, match="repeats must be a whole number of at least 1"):
        evaluate(tmp_path, tmp_path, REPO / "sample_data" / "model", repeats=0)


def test_a_result_refuses_to_write_into_an_image_folder(sample_audit) -> None:
    _, payload, _ = sample_audit
    result = cdi_audit.AuditResult.model_validate(payload)
    with pytest.raises(OutputProblem, match="lies inside the suspect folder"):
        result.write(Path(payload["suspect_dir"]) / "out")
    assert result.exit_code == 1


def test_import_cdi_audit_loads_neither_torch_nor_scikit_learn() -> None:
    code = ("import sys, cdi_audit; print(sorted(set(cdi_audit.__all__) - set(dir(cdi_audit))), "
            "'torch' in sys.modules, 'sklearn' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.split() == ["[]", "False", "False"]
    assert set(cdi_audit.__all__) == {"__version__", *cdi_audit._EXPORTS}
    assert all(getattr(cdi_audit, name) is not None for name in cdi_audit.__all__)


def test_every_module_of_the_package_imports() -> None:
    """A name moved between modules is caught here, not when a command first reaches the import."""
    failures = []
    for module in pkgutil.walk_packages(cdi_audit.__path__, "cdi_audit."):
        if not module.name.endswith("__main__"):
            try:
                importlib.import_module(module.name)
            except Exception as error:  # noqa: BLE001 - every failure is listed
                failures.append(f"{module.name}: {error!r}")
    assert failures == []
