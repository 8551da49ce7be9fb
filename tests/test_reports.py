"""The audit's output folder: report.json and its schema, manifest.json, scores.csv, and ``verify``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.inputs.images import file_sha256
from cdi_audit.report.files import write_audit_files
from cdi_audit.results.manifest import INPUT_ROLES, MANIFEST_VERSION, Manifest, content_digest, verify_manifest
from cdi_audit.results.schema import AuditResult, report_schema

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("report.html", "report.pdf", "sample_size_curve.png", "score_histograms.png", "scores.csv",
           "thumbnails.png")
NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None; "


def run(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(arg) for arg in args], prog_name="cdi-audit")
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def audit_folder(image_sets, tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A split-test audit of copies of the image sets (so tests may change them), written with --out."""
    root = tmp_path_factory.mktemp("report")
    suspect, reference = (shutil.copytree(folder, root / name)
                          for folder, name in zip(image_sets, ("p", "u"), strict=True))
    code, _, stderr = run("check", suspect, "--reference", reference, "--model", tiny_model, "--test", "split",
                          "--no-cache", "--out", root / "out", "--jobs", "1")
    assert code in (0, 1), stderr
    return root / "out"


def test_the_output_folder_holds_report_manifest_and_scores(audit_folder: Path, tiny_model: Path) -> None:
    result = AuditResult.model_validate_json((audit_folder / "report.json").read_text())
    manifest = Manifest.model_validate_json((audit_folder / "manifest.json").read_text())
    images = [entry for entry in manifest.files if entry.role in ("suspect", "reference")]
    model_files = [entry for entry in manifest.files if entry.role == "model"]
    assert len(images) == result.n_suspect + result.n_reference == 24
    assert sorted(Path(entry.path).name for entry in model_files) == [
        "config.json", "diffusion_pytorch_model.safetensors", "model_index.json", "scheduler_config.json"]
    # The report, then every other file written, by their paths relative to the manifest's folder.
    assert [(entry.role, entry.path) for entry in manifest.files[len(images) + len(model_files):]] == [
        ("report", "report.json"), *(("output", name) for name in OUTPUTS)]
    for entry in manifest.files:
        path = audit_folder / entry.path  # absolute paths stay as they are
        assert entry.sha256 == file_sha256(path) and entry.size_bytes == path.stat().st_size
    assert {(entry.width, entry.height) for entry in images} == {(24, 20)}  # as conftest writes them
    assert manifest.digest == content_digest(manifest.files) and manifest.created == result.created
    assert manifest.schema_version == MANIFEST_VERSION == "3"
    with (audit_folder / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["sha256"] for row in rows] == [image.sha256 for image in result.images]
    # The split test scores the held-out half only, 6 suspect and 6 reference images.
    scored = [row for row in rows if row["diagnostic_score"]]
    assert len(scored) == 12 and sum(row["role"] == "suspect" for row in scored) == 6
    assert all(0 <= float(row["diagnostic_score"]) <= 1 for row in scored)
    written = sorted(path.name for path in audit_folder.iterdir())
    assert written == ["manifest.json", "report.html", "report.json", "report.pdf", "sample_size_curve.png",
                       "score_histograms.png", "scores.csv", "thumbnails.png"]
    for name in written:
        if name.endswith(".png"):
            assert (audit_folder / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (audit_folder / "report.pdf").read_bytes().startswith(b"%PDF-")


def test_report_json_round_trips_and_rewrites_byte_identically(audit_folder: Path, tmp_path: Path) -> None:
    text = (audit_folder / "report.json").read_text()
    result = AuditResult.model_validate_json(text)
    assert result.model_dump_json(indent=2) + "\n" == text
    write_audit_files(result, tmp_path)
    for name in ("report.json", "manifest.json", "scores.csv"):
        assert (tmp_path / name).read_bytes() == (audit_folder / name).read_bytes()


def test_the_committed_schema_is_the_current_one() -> None:
    committed = json.loads((REPO / "docs" / "report.schema.json").read_text())
    assert committed == report_schema(), "regenerate docs/report.schema.json (README, Development)"


def test_verify_says_which_files_changed_or_went_missing(audit_folder: Path, tmp_path: Path) -> None:
    code, stdout, stderr = run("verify", audit_folder, "--json")
    assert code == 0 and json.loads(stdout)["verified"] and json.loads(stdout)["matched"] == 35
    assert "VERIFIED 35 of 35 files match" in " ".join(stderr.split())
    # Work on a copy of the folder whose manifest points at copies of two images.
    folder = shutil.copytree(audit_folder, tmp_path / "audit")
    manifest = Manifest.model_validate_json((folder / "manifest.json").read_text())
    changed, missing = (tmp_path / "changed.png", tmp_path / "missing.png")
    shutil.copy(manifest.files[0].path, changed)
    shutil.copy(manifest.files[1].path, missing)
    manifest.files[0].path, manifest.files[1].path = str(changed), str(missing)
    (folder / "manifest.json").write_text(manifest.model_dump_json())
    changed.write_bytes(changed.read_bytes() + b"\0")
    missing.unlink()
    code, stdout, stderr = run("verify", folder, "--json")
    payload = json.loads(stdout)
    assert code == 3 and not payload["verified"]
    assert (payload["changed"], payload["missing"], payload["matched"]) == ([str(changed)], [str(missing)], 33)
    assert f"changed suspect {changed}" in " ".join(stderr.split())


def test_verify_finds_an_edited_report_and_keeps_the_inputs_digest(audit_folder: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(audit_folder, tmp_path / "audit")  # the image and model paths are absolute
    report = bytearray((folder / "report.json").read_bytes())
    position = report.index(b'"p_value": ') + len(b'"p_value": ')
    report[position] = ord("9") if report[position] != ord("9") else ord("8")  # one byte of the p-value
    (folder / "report.json").write_bytes(bytes(report))
    manifest = Manifest.model_validate_json((folder / "manifest.json").read_text())
    code, stdout, stderr = run("verify", folder, "--json")
    payload = json.loads(stdout)
    assert code == 3 and not payload["verified"]
    assert (payload["changed"], payload["missing"], payload["matched"]) == (["report.json"], [], 34)
    assert "changed report report.json" in " ".join(stderr.split())
    # The set digest speaks of the inputs only: the same as before the report and output entries existed.
    inputs = [entry for entry in manifest.files if entry.role in INPUT_ROLES]
    assert len(inputs) == 28 and payload["digest"] == manifest.digest == content_digest(inputs)
    outcome = verify_manifest(manifest, folder=folder)
    assert [entry.role for entry in outcome.changed] == ["report"] and len(outcome.matched) == 34


def test_a_version_1_manifest_without_the_report_still_verifies(audit_folder: Path, tmp_path: Path) -> None:
    manifest = Manifest.model_validate_json((audit_folder / "manifest.json").read_text())
    old = manifest.model_copy(update={"schema_version": "1",
                                      "files": [entry for entry in manifest.files if entry.role in INPUT_ROLES]})
    (tmp_path / "manifest.json").write_text(old.model_dump_json(indent=2))
    code, stdout, _ = run("verify", tmp_path, "--json")
    payload = json.loads(stdout)
    assert code == 0 and payload["verified"] and payload["matched"] == 28 and payload["digest"] == manifest.digest


def test_report_without_a_manifest_renders_only_forced_from_a_rebuilt_one(audit_folder: Path,
                                                                         tmp_path: Path) -> None:
    shutil.copy(audit_folder / "report.json", tmp_path / "report.json")
    code, _, stderr = run("report", tmp_path, "--html")
    assert code == 3 and "(there is no manifest.json beside report.json)" in " ".join(stderr.split())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json"]
    code, _, stderr = run("report", tmp_path, "--html", "--force")
    assert code == 0, stderr
    assert not (tmp_path / "manifest.json").exists()
    # The manifest rebuilt from the files the report lists is the one the audit wrote: the page is the
    # audit's own, but for the line that says it is unverified.
    line = ('<p class="unverified">UNVERIFIED: rendered with --force from a report.json that does not match its '
            "manifest (there is no manifest.json beside report.json).</p>\n")
    page = (tmp_path / "report.html").read_text()
    assert line in page and page.replace(line, "") == (audit_folder / "report.html").read_text()


def test_verify_refuses_what_is_not_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    code, _, stderr = run("verify", tmp_path)
    assert code == 3 and "is not a readable cdi-audit manifest" in " ".join(stderr.split())


def test_verify_runs_without_torch(audit_folder: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", NO_TORCH + "from cdi_audit.cli import app; app(['verify', sys.argv[1]])",
         str(audit_folder)], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert "VERIFIED" in completed.stderr
