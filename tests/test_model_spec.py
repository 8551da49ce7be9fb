"""One way to load a model: every command goes through ModelSpec.load with the machine options it was given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.models.adapters import Adapter
from cdi_audit.models.spec import Machine, ModelSpec


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[ModelSpec, Machine]]:
    """Every (spec, machine) a command loads, in order."""
    seen: list[tuple[ModelSpec, Machine]] = []
    original = ModelSpec.load

    def recording(self: ModelSpec, machine: Machine):
        seen.append((self, machine))
        return original(self, machine)

    monkeypatch.setattr(ModelSpec, "load", recording)
    return seen


def run(*arguments: str):
    return CliRunner().invoke(app, [*arguments])


def test_check_and_its_control_model_load_through_the_spec_with_the_given_machine(
        tiny_model: Path, trained_tiny_model, image_sets, loads) -> None:
    suspect, reference = image_sets
    result = run("check", str(suspect), "--reference", str(reference), "--model", str(tiny_model), "--control-model",
                 str(trained_tiny_model[0]), "--dtype", "float32", "--device", "cpu", "--json", "--no-cache",
                 "--permutations", "200", "--jobs", "1")
    assert result.exit_code in (0, 5), result.stdout
    assert [(spec.path, machine) for spec, machine in loads] == [
        (tiny_model, Machine("cpu", "float32", False)), (trained_tiny_model[0], Machine("cpu", "float32", False))]
    configuration = json.loads(result.stdout)["configuration"]
    assert (configuration["model_path"], configuration["control_model"], configuration["dtype"]) == (
        str(tiny_model), str(trained_tiny_model[0]), "float32")
    assert configuration["model_config"] is None and configuration["compile_network"] is False


def test_extract_and_extract_evidence_load_through_the_spec(tiny_model: Path, image_sets, loads, tmp_path) -> None:
    suspect, reference = image_sets
    extracted = run("extract", str(suspect), str(reference), "--model", str(tiny_model), "--device", "cpu",
                    "--dtype", "float32", "--cache-dir", str(tmp_path / "cache"), "--features", "loss")
    assert extracted.exit_code == 0, extracted.stdout
    searched = run("extract-evidence", str(suspect), "--model", str(tiny_model), "--device", "cpu", "--budget", "8",
                   "--steps", "2", "--no-cache", "--json")
    assert searched.exit_code in (0, 1), searched.stdout
    assert [(spec.path, machine.device, machine.dtype) for spec, machine in loads] == [
        (tiny_model, "cpu", "float32"), (tiny_model, "cpu", "auto")]
    assert json.loads(searched.stdout)["settings"]["model_path"] == str(tiny_model)


def test_every_model_command_offers_the_same_machine_options() -> None:
    for command in ("check", "extract", "batch", "evaluate", "serve", "extract-evidence"):
        text = run(command, "--help").stdout
        assert all(option in text for option in ("--device", "--dtype", "--compile")), command


def test_specs_naming_the_same_files_share_a_key(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tiny_model.parent)
    assert ModelSpec(Path(tiny_model.name)).key == ModelSpec(tiny_model).key
    assert ModelSpec(tiny_model, Path("stable-diffusion-v2")).key != ModelSpec(tiny_model).key
    lora = tmp_path / "lora.safetensors"
    assert ModelSpec(tiny_model, adapters=(Adapter(lora),)).key != ModelSpec(tiny_model).key
    half, whole = (ModelSpec(tiny_model, adapters=(Adapter(lora, scale),)) for scale in (0.5, 1.0))
    assert half.key != whole.key
