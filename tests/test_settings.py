"""The rule book: every range is checked on the settings object itself, so the Python entry point refuses what
the command line and batch files refuse, with the same sentence under each surface's own name."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA

from cdi_audit.cli.app import option_name
from cdi_audit.errors import InvalidSetting, SettingsProblem
from cdi_audit.models.adapters import Adapter
from cdi_audit.models.spec import Machine, ModelSpec
from cdi_audit.pipeline.audit import run_audit
from cdi_audit.pipeline.evaluate import EvaluationSettings
from cdi_audit.pipeline.settings import AuditSettings, ModelSettings

MODEL = ModelSpec(SAMPLE_DATA / "model")


def audit_settings(tmp_path: Path, **changes) -> AuditSettings:
    values = dict(suspect_dir=SAMPLE_DATA / "published", reference_dir=SAMPLE_DATA / "unpublished", model=MODEL,
                  features="loss", curve_resamples=0, cache_dir=tmp_path / "cache")
    return AuditSettings(**{**values, **changes})


@pytest.mark.parametrize(("changes", "field", "problem"), [
    ({"alpha": 0.0}, "alpha", "must be a number between 0 and 0.5"),
    ({"alpha": math.nan}, "alpha", "must be a number between 0 and 0.5"),
    ({"permutations": 50}, "permutations", "must be at least 100 for alpha = 0.01: with 50 the smallest p-value"),
    ({"permutations": -5}, "permutations", "must be a whole number of at least 1"),
    ({"permutations": 10, "test": "split"}, "permutations", "must be at least 20 for shift_alpha = 0.05"),
    ({"test": "cdi-reference"}, "test", "must be 'permutation' or 'split'"),
    ({"shift_alpha": 5.0}, "shift_alpha", "must be a number from 0.001 to 0.5"),
    ({"curve_resamples": -3}, "curve_resamples", "must be a whole number of at least 0"),
    ({"seed": -1}, "seed", "must be a whole number from 0 to 4294967295"),
    ({"seed": 2**64}, "seed", "must be a whole number from 0 to 4294967295"),
    ({"seed": True}, "seed", "must be a whole number"),
    ({"batch_size": 0}, "batch_size", "must be a whole number of at least 1"),
    ({"n_jobs": 0}, "n_jobs", "must be a whole number of at least 1"),
    ({"features": "loss,telepathy"}, "features", "cannot be 'loss,telepathy'"),
    ({"access": "grey"}, "access", "must be 'auto' or 'blackbox'"),
    ({"calibration": False}, "calibration", "applies to audits with adapters only"),
    ({"model": None}, "model", "must be given either as a local model or as an endpoint"),
])
def test_the_settings_refuse_what_the_command_line_refuses(tmp_path: Path, changes: dict, field: str,
                                                           problem: str) -> None:
    with pytest.raises(InvalidSetting) as raised:
        audit_settings(tmp_path, **changes)
    assert raised.value.field == field and problem in raised.value.problem
    assert str(raised.value) == f"{field} {raised.value.problem}"
    assert raised.value.exit_code == 2


def test_run_audit_cannot_be_given_a_test_that_cannot_reach_alpha(tmp_path: Path) -> None:
    """Before the rule book, run_audit accepted 50 permutations at alpha 0.01 and returned a p-value that could
    never be significant: a no-evidence verdict the test was unable to avoid."""
    with pytest.raises(InvalidSetting, match="permutations must be at least 100"):
        run_audit(audit_settings(tmp_path, permutations=50))


def test_each_surface_names_the_setting_its_own_way() -> None:
    error = InvalidSetting("n_jobs", "must be a whole number of at least 1, not 0.")
    assert option_name("n_jobs") == "--jobs" and option_name("shift_alpha") == "--shift-alpha"
    assert error.worded(option_name(error.field)) == "--jobs must be a whole number of at least 1, not 0."
    assert str(error) == "n_jobs must be a whole number of at least 1, not 0."


def test_a_cache_folder_that_cannot_take_files_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingsProblem, match="is a file"):
        audit_settings(tmp_path, cache_dir=tmp_path / "file")
    with pytest.raises(InvalidSetting, match="cannot take files"):
        audit_settings(tmp_path, cache_dir=Path("/proc/cdi-audit-cache"))
    assert audit_settings(tmp_path, cache_dir=Path("/proc/cdi-audit-cache"), use_cache=False).store_root is None
    assert audit_settings(tmp_path).store_root == tmp_path / "cache" and (tmp_path / "cache").is_dir()
    assert list((tmp_path / "cache").iterdir()) == []  # the probe leaves nothing behind


def test_an_adapter_audit_without_calibration_runs_its_base_as_the_control(tmp_path: Path) -> None:
    """--no-calibration belongs to the adapted model; the base it is compared with has no adapters, and its
    settings must still be valid (they were refused as 'calibration applies to adapters only')."""
    from cdi_audit.features.registry import resolve_extractors
    from cdi_audit.pipeline.control import control_settings
    from cdi_audit.pipeline.model_features import on_model

    lora = SAMPLE_DATA / "lora"
    settings = audit_settings(tmp_path, model=ModelSpec(lora / "base", adapters=(Adapter(lora / "x.safetensors"),)),
                              calibration=False)
    extractors = resolve_extractors("loss")
    control = control_settings(settings, extractors)
    assert control.model == ModelSpec(lora / "base") and control.calibration and not control.calibrated
    assert on_model(settings, settings.model.base, extractors).model.adapters == ()
    assert not settings.calibrated and settings.control_is_base


def test_evaluation_settings_follow_the_same_book(tmp_path: Path) -> None:
    values = dict(members_dir=tmp_path, nonmembers_dir=tmp_path, model=MODEL, cache_dir=tmp_path)
    with pytest.raises(InvalidSetting, match="permutations must be at least 100 for the 'images needed'"):
        EvaluationSettings(**values, permutations=50)
    with pytest.raises(InvalidSetting, match="repeats must be a whole number of at least 1"):
        EvaluationSettings(**values, repeats=0)
    assert EvaluationSettings(**values, permutations=50, tests=("split",)).permutations == 50


def test_machine_and_model_rules() -> None:
    with pytest.raises(InvalidSetting, match="dtype must be one of auto, float32, bfloat16, float16"):
        Machine(dtype="float8")
    with pytest.raises(InvalidSetting, match="device cannot be 'tpu'"):
        Machine(device="tpu")
    for guidance in (math.inf, math.nan, 1e300, -1.0):
        with pytest.raises(InvalidSetting, match="guidance must be a number from 0 to 100"):
            ModelSpec(Path("m"), guidance=guidance)
    with pytest.raises(InvalidSetting, match="is given twice"):
        ModelSpec(Path("m"), adapters=(Adapter(Path("a.safetensors")), Adapter(Path("./a.safetensors"), 0.5)))
    with pytest.raises(InvalidSetting, match="calibration against the base"):
        ModelSettings(model=MODEL, calibration=False, use_cache=False)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, math.nan, 10.5])
def test_adapter_scales_outside_0_to_10_are_refused(scale: float) -> None:
    with pytest.raises(InvalidSetting, match="the scale must be a number above 0 and at most 10"):
        Adapter(Path("a.safetensors"), scale)


def test_only_a_trailing_number_is_an_adapter_scale(tmp_path: Path) -> None:
    assert Adapter.parse("a.safetensors:0.8") == Adapter(Path("a.safetensors"), 0.8)
    assert Adapter.parse("a.safetensors") == Adapter(Path("a.safetensors"), 1.0)
    assert Adapter.parse("dir:x/a.safetensors") == Adapter(Path("dir:x/a.safetensors"), 1.0)
    assert Adapter.parse("file:1:2") == Adapter(Path("file:1"), 2.0)
    for text, wrong in (("a.safetensors:abc", "has 'abc' after"), ("a.safetensors:", "has nothing after")):
        with pytest.raises(InvalidSetting, match=wrong):
            Adapter.parse(text)
    named = tmp_path / "x:0.5"  # a file whose own name ends in ':NUMBER', with no file 'x' beside it
    named.write_bytes(b"")
    assert Adapter.parse(str(named)) == Adapter(named, 1.0)
    (tmp_path / "x").write_bytes(b"")  # now 'x' exists too: the scale reading wins; NAME:1 gives the file
    assert Adapter.parse(str(named)) == Adapter(tmp_path / "x", 0.5)
    assert Adapter.parse(f"{named}:1") == Adapter(named, 1.0)
