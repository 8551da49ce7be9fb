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
from cdi_audit.images import file_sha256
from cdi_audit.manifest import Manifest, content_digest
from cdi_audit.report.files import write_audit_files
from cdi_audit.result import AuditResult, report_schema

REPO = Path(__file__).resolve().parents[1]
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
    images = [entry for entry in manifest.files if entry.role != "model"]
    model_files = [entry for entry in manifest.files if entry.role == "model"]
    assert len(images) == result.n_suspect + result.n_reference == 24
    assert sorted(Path(entry.path).name for entry in model_files) == [
        "config.json", "diffusion_pytorch_model.safetensors", "model_index.json", "scheduler_config.json"]
    for entry in manifest.files:
        assert entry.sha256 == file_sha256(Path(entry.path)) and entry.size_bytes == Path(entry.path).stat().st_size
    assert {(entry.width, entry.height) for entry in images} == {(24, 20)}  # as conftest writes them
    assert manifest.digest == content_digest(manifest.files) and manifest.created == result.created
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
    assert code == 0 and json.loads(stdout)["verified"] and json.loads(stdout)["matched"] == 28
    assert "VERIFIED 28 of 28 files match" in " ".join(stderr.split())
    # Work on a copy of the manifest that points at copies of two images.
    manifest = Manifest.model_validate_json((audit_folder / "manifest.json").read_text())
    changed, missing = (tmp_path / "changed.png", tmp_path / "missing.png")
    shutil.copy(manifest.files[0].path, changed)
    shutil.copy(manifest.files[1].path, missing)
    manifest.files[0].path, manifest.files[1].path = str(changed), str(missing)
    (tmp_path / "manifest.json").write_text(manifest.model_dump_json())
    changed.write_bytes(changed.read_bytes() + b"\0")
    missing.unlink()
    code, stdout, stderr = run("verify", tmp_path, "--json")
    payload = json.loads(stdout)
    assert code == 3 and not payload["verified"]
    assert (payload["changed"], payload["missing"], payload["matched"]) == ([str(changed)], [str(missing)], 26)
    assert f"changed suspect {changed}" in " ".join(stderr.split())


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
