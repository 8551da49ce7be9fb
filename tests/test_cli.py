"""The command-line contract: JSON fields, exit codes on their causes, caching across runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_images
from typer.testing import CliRunner

import cdi_audit.pipeline.audit
from cdi_audit.cli import app
from cdi_audit.features.catalogue import PRESETS, column_count, noise_predictions

CONTRACT_FIELDS = {
    "verdict", "p_value", "alpha", "test", "n_suspect", "n_reference", "effect", "features", "controls",
    "model", "seed", "versions", "skipped_files",
}


def run(*args: str) -> tuple[int, dict | None, str]:
    """Invoke the CLI; return the exit code, the JSON on stdout (if any) and stderr."""
    result = CliRunner().invoke(app, [str(arg) for arg in args], prog_name="cdi-audit")
    payload = json.loads(result.stdout) if result.stdout.strip() else None
    return result.exit_code, payload, result.stderr


@pytest.fixture
def audit_args(image_sets, tiny_model, tmp_path):
    suspect, reference = image_sets
    return ["check", suspect, "--reference", reference, "--model", tiny_model, "--cache-dir", tmp_path / "cache",
            "--json", "--test", "split"]


def test_json_result_holds_the_contract_fields_and_matches_report_json(audit_args, tmp_path: Path) -> None:
    code, payload, _ = run(*audit_args, "--out", tmp_path / "out")
    assert CONTRACT_FIELDS <= set(payload)
    assert {"auc", "mean_score_difference"} <= set(payload["effect"])
    assert {"path", "fingerprint"} <= set(payload["model"])
    assert "negative_control_p_value" in payload["controls"]
    assert len(payload["features"]) == column_count(PRESETS["fast"])
    assert payload["n_suspect"] == 12 and payload["n_reference"] == 12
    assert code == {"no_evidence": 0, "evidence": 1, "inconclusive": 5}[payload["verdict"]]
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == payload
    assert payload["extraction"]["model_calls"] == 24 * noise_predictions(PRESETS["fast"])


def test_a_second_identical_run_makes_no_model_call_and_gives_the_same_p_value(audit_args) -> None:
    arguments = [*audit_args[:-2], "--test", "permutation", "--permutations", "200", "--alpha", "0.05"]
    first_code, first, _ = run(*arguments)
    second_code, second, _ = run(*arguments)
    assert first["extraction"]["model_calls"] == 24 * noise_predictions(PRESETS["fast"])
    assert second["extraction"]["model_calls"] == 0
    assert second["extraction"]["images_from_cache"] == 24
    assert second["p_value"] == first["p_value"] and second_code == first_code


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda args: args[:2] + args[4:], "Missing option '--reference'"),
        (lambda args: [*args, "--alpha", "0.7"], "--alpha must be a number between 0 and 0.5 (e.g. 0.01), not 0.7"),
        (lambda args: [*args, "--features", "fast,bogus"], "unknown feature set or extractor 'bogus'"),
        (lambda args: [*args, "--test", "bogus"], "'bogus' is not one of"),
        (lambda args: [*args, "--test", "permutation", "--permutations", "50"],
         "--permutations must be at least 100 for alpha = 0.01: with 50 the smallest p-value is 1/51"),
        (lambda args: [*args, "--device", "tpu"], "--device"),
    ],
)
def test_usage_errors_exit_2_and_say_what_is_wrong(audit_args, change, message: str) -> None:
    code, _, stderr = run(*change(audit_args))
    assert code == 2
    assert message in " ".join(stderr.replace("│", " ").split())


def test_too_few_images_exit_3(audit_args, tmp_path: Path) -> None:
    write_images(tmp_path / "few", 9, seed=5)
    code, payload, stderr = run(*audit_args[:1], tmp_path / "few", *audit_args[2:])
    assert code == 3
    assert "9 usable image(s)" in payload["error"]["message"] and "at least 10" in payload["error"]["message"]
    assert "Traceback" not in stderr


def test_the_same_file_in_both_sets_exits_3(audit_args, image_sets, tmp_path: Path) -> None:
    suspect, reference = image_sets
    mixed = shutil.copytree(suspect, tmp_path / "mixed")
    shutil.copy(next(reference.iterdir()), mixed / "leaked.png")
    code, payload, _ = run(*audit_args[:1], mixed, *audit_args[2:])
    assert code == 3 and "the reference set must hold only unpublished images" in payload["error"]["message"]


def test_a_missing_folder_exits_3(audit_args, tmp_path: Path) -> None:
    code, _, _ = run(*audit_args[:1], tmp_path / "nowhere", *audit_args[2:])
    assert code == 3


def test_a_bad_image_is_skipped_and_listed_or_with_strict_exits_3(audit_args, image_sets, tmp_path: Path) -> None:
    suspect, _ = image_sets
    with_bad = shutil.copytree(suspect, tmp_path / "with_bad")
    (with_bad / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    code, payload, _ = run(*audit_args[:1], with_bad, *audit_args[2:])
    assert code in (0, 1, 5) and payload["n_suspect"] == 12
    assert payload["skipped_files"] == [
        {"path": str(with_bad / "corrupt.jpg"), "reason": "not a readable image", "image_set": "suspect"}]
    strict_code, _, _ = run(*audit_args[:1], with_bad, *audit_args[2:], "--strict")
    assert strict_code == 3


def test_a_path_that_is_not_a_model_exits_4(audit_args, image_sets, tmp_path: Path) -> None:
    args = list(audit_args)
    args[args.index("--model") + 1] = tmp_path
    code, payload, stderr = run(*args)
    assert code == 4
    assert "Expected a diffusers pipeline folder" in payload["error"]["message"]
    assert "Traceback" not in stderr


def test_an_internal_error_never_exits_like_a_finding(audit_args, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("something unexpected")

    monkeypatch.setattr(cdi_audit.pipeline.audit, "run_audit", broken)
    code, payload, stderr = run(*audit_args)
    assert code == 70
    assert "something unexpected" in payload["error"]["message"] and "Traceback" not in stderr


def test_an_interrupted_audit_exits_130_and_says_it_resumes(audit_args, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cdi_audit.pipeline.audit, "run_audit", interrupted)
    code, payload, stderr = run(*audit_args)
    assert code == 130 and payload["error"]["exit_code"] == 130
    assert "a re-run resumes" in payload["error"]["message"] and "Traceback" not in stderr


def test_the_console_script_entry_point_runs() -> None:
    completed = subprocess.run([sys.executable, "-m", "cdi_audit", "--version"], capture_output=True, text=True)
    assert completed.returncode == 0 and completed.stdout.startswith("cdi-audit ")
