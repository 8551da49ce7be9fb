"""The chain of custody of an audit's folder: manifest.json lists every file the audit read and wrote,
``verify`` refuses a folder that changed in any of them, a write that fails leaves no folder that verifies,
and ``report`` neither renders a tampered report.json as if it were the audit's nor launders it with --force."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.report.files import manifest_json, write_reports
from cdi_audit.results.manifest import MANIFEST_VERSION, Manifest, content_digest, documented_manifest
from cdi_audit.results.schema import AdapterInfo, AuditResult, TrainingClaims

OUTPUTS = ["report.html", "report.pdf", "sample_size_curve.png", "score_histograms.png", "scores.csv",
           "thumbnails.png"]
UNVERIFIED = "UNVERIFIED: rendered with --force from a report.json that does not match its manifest"


def run(*args) -> tuple[int, str, str]:
    """Exit code, stdout, and stderr as one line (Rich wraps it)."""
    result = CliRunner().invoke(app, [str(arg) for arg in args], prog_name="cdi-audit")
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def verified(folder: Path) -> tuple[int, dict]:
    code, stdout, _ = run("verify", folder, "--json")
    return code, json.loads(stdout)


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def pdf_text(path: Path) -> str:
    return " ".join(" ".join(page.extract_text().split()) for page in PdfReader(path).pages)


@pytest.fixture(scope="module")
def original(sample_audit: tuple[int, dict, Path]) -> Path:
    """The sample audit's folder, as check --out wrote it; never changed (copy it first)."""
    code, _, folder = sample_audit
    assert code == 1
    return folder


@pytest.fixture
def folder(original: Path, tmp_path: Path) -> Path:
    """A copy of the sample audit's folder to tamper with."""
    return Path(shutil.copytree(original, tmp_path / "audit"))


def edit_report(folder: Path) -> None:
    """Change the audit's seed in report.json, as someone who tampers with the result would."""
    path = folder / "report.json"
    text = path.read_text()
    assert '"seed": 0' in text
    path.write_text(text.replace('"seed": 0', '"seed": 1', 1))


def test_the_manifest_lists_every_file_the_audit_wrote_and_the_documents_the_inputs(original: Path) -> None:
    manifest = Manifest.model_validate_json((original / "manifest.json").read_bytes())
    assert manifest.schema_version == MANIFEST_VERSION == "3"
    outputs = [entry for entry in manifest.files if entry.role == "output"]
    assert [entry.path for entry in outputs] == OUTPUTS  # every other file of the folder, by name
    for entry in outputs:
        content = (original / entry.path).read_bytes()
        assert (entry.sha256, entry.size_bytes) == (hashlib.sha256(content).hexdigest(), len(content))
    assert sorted(path.name for path in original.iterdir()) == sorted([*OUTPUTS, "manifest.json", "report.json"])
    # The set digest still speaks of the inputs only.
    inputs = [entry for entry in manifest.files if entry.role not in ("report", "output")]
    assert len(inputs) == 128 + 4 and manifest.digest == content_digest(inputs)
    # The PDF carries the manifest of the inputs and report.json: it cannot hash itself.
    attached = PdfReader(original / "report.pdf").attachments["manifest.json"][0]
    assert attached == manifest_json(documented_manifest(manifest)).encode()
    assert not any(entry.role == "output" for entry in Manifest.model_validate_json(attached).files)
    code, payload = verified(original)
    assert code == 0 and payload == {"verified": True, "digest": manifest.digest, "digest_matches_entries": True,
                                     "matched": 139, "changed": [], "missing": [], "unlisted": []}


def test_verify_names_an_edited_scores_file(folder: Path) -> None:
    scores = folder / "scores.csv"
    scores.write_text(scores.read_text().replace("suspect", "reference", 1))
    code, payload = verified(folder)
    assert code == 3 and not payload["verified"]
    assert (payload["changed"], payload["missing"], payload["matched"]) == (["scores.csv"], [], 138)
    assert "changed output scores.csv" in run("verify", folder)[2]


def test_verify_names_a_deleted_figure(folder: Path) -> None:
    (folder / "score_histograms.png").unlink()
    code, payload = verified(folder)
    assert code == 3 and (payload["changed"], payload["missing"]) == ([], ["score_histograms.png"])
    assert "missing output score_histograms.png" in run("verify", folder)[2]


def test_verify_names_an_edited_html_report(folder: Path) -> None:
    page = folder / "report.html"
    page.write_text(page.read_text().replace("EVIDENCE", "NO EVIDENCE", 1))
    code, payload = verified(folder)
    assert code == 3 and (payload["changed"], payload["missing"]) == (["report.html"], [])


def test_verify_refuses_a_manifest_whose_digest_is_not_its_entries(folder: Path) -> None:
    path = folder / "manifest.json"
    manifest = Manifest.model_validate_json(path.read_bytes())
    forged = ("0" if manifest.digest[0] != "0" else "1") + manifest.digest[1:]
    path.write_text(path.read_text().replace(manifest.digest, forged))
    code, payload = verified(folder)
    assert code == 3 and not payload["verified"] and not payload["digest_matches_entries"]
    assert (payload["digest"], payload["changed"], payload["missing"], payload["matched"]) == (forged, [], [], 139)
    assert f"edited manifest.json: its set digest {forged[:16]}… is not the {manifest.digest[:16]}…" in \
        run("verify", folder)[2]


def test_verify_notes_files_the_manifest_does_not_list_without_failing(folder: Path) -> None:
    (folder / "notes.txt").write_text("the lawyer's notes")
    code, payload = verified(folder)
    assert code == 0 and payload["verified"] and payload["unlisted"] == ["notes.txt"]
    assert "note: not in the manifest, so not checked: notes.txt" in run("verify", folder)[2]


def test_verify_refuses_a_folder_without_manifest(folder: Path) -> None:
    (folder / "manifest.json").unlink()
    code, stdout, stderr = run("verify", folder)
    assert code == 3 and stdout == ""
    assert stderr == (f"error: No manifest.json at {folder / 'manifest.json'}, so nothing says which files the "
                      "audit wrote (a write that fails part-way leaves none); give the folder an audit wrote with "
                      "--out.")


@pytest.mark.parametrize("into", ["the audit's own folder", "a new folder"])
def test_a_write_that_fails_leaves_no_folder_that_verifies(folder: Path, tmp_path: Path, into: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from cdi_audit.report import files

    written = []

    def disk_full_at_the_pdf(path: Path, content: bytes) -> None:
        if path.name == "report.pdf":
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path.name)
        atomic_write(path, content)

    atomic_write = files.atomic_write
    monkeypatch.setattr(files, "atomic_write", disk_full_at_the_pdf)
    out = folder if into == "the audit's own folder" else tmp_path / "new"
    code, _, stderr = run("report", folder, "--out", out)
    assert code == 2 and "No space left on device" in stderr
    assert written == ["report.json", "scores.csv", "sample_size_curve.png", "score_histograms.png",
                       "thumbnails.png", "report.html"]
    assert not (out / "manifest.json").exists()  # deleted before the first write, written only after the last
    assert run("verify", out)[0] == 3


def test_report_refuses_a_tampered_report_and_writes_nothing(folder: Path) -> None:
    edit_report(folder)
    before = contents(folder)
    code, _, stderr = run("report", folder)
    assert code == 3
    assert stderr == (f"error: {folder / 'report.json'} is not vouched for by its manifest (its hash is not the "
                      "one manifest.json lists for report.json); re-run the audit with --out, or render it marked "
                      "UNVERIFIED with 'cdi-audit report --force'.")
    assert contents(folder) == before  # scores.csv, the documents and the manifest unchanged


def test_report_refuses_a_manifest_with_an_edited_digest(folder: Path) -> None:
    path = folder / "manifest.json"
    manifest = Manifest.model_validate_json(path.read_bytes())
    path.write_text(path.read_text().replace(manifest.digest, "f" * 64))
    code, _, stderr = run("report", folder, "--html")
    assert code == 3 and "(the set digest in manifest.json does not match its own entries)" in stderr


def test_report_refuses_thumbnails_that_differ_from_the_manifest(folder: Path) -> None:
    shutil.copy(folder / "score_histograms.png", folder / "thumbnails.png")
    before = contents(folder)
    code, _, stderr = run("report", folder, "--html")
    assert code == 3 and "(thumbnails.png differs from its hash in manifest.json)" in stderr
    assert contents(folder) == before


def test_report_force_marks_the_documents_and_never_launders_the_folder(folder: Path, original: Path) -> None:
    edit_report(folder)
    before = contents(folder)
    code, _, stderr = run("report", folder, "--force")
    assert code == 0, stderr
    assert f"UNVERIFIED {folder / 'report.json'}: its hash is not the one manifest.json lists for report.json" \
           in stderr
    line = f"{UNVERIFIED} (its hash is not the one manifest.json lists for report.json)."
    page = (folder / "report.html").read_text()
    assert f'<p class="unverified">{line}</p>' in page
    assert page.index(line) < page.index('class="verdict"')  # near the top, above the verdict
    first_page = " ".join(PdfReader(folder / "report.pdf").pages[0].extract_text().split())
    assert line in first_page and UNVERIFIED not in pdf_text(original / "report.pdf")
    # manifest.json, report.json and scores.csv are left as they were: the folder still fails verify.
    for name in ("manifest.json", "report.json", "scores.csv"):
        assert (folder / name).read_bytes() == before[name], name
    code, payload = verified(folder)
    assert code == 3 and (payload["changed"], payload["missing"]) == (["report.json", "report.html", "report.pdf"],
                                                                      [])


def test_report_without_manifest_is_refused_and_forced_renders_unverified(folder: Path) -> None:
    (folder / "manifest.json").unlink()
    code, _, stderr = run("report", folder, "--html")
    assert code == 3 and "(there is no manifest.json beside report.json)" in stderr
    code, _, stderr = run("report", folder, "--html", "--force")
    assert code == 0, stderr
    assert f"{UNVERIFIED} (there is no manifest.json beside report.json)." in (folder / "report.html").read_text()
    assert not (folder / "manifest.json").exists()


def test_a_verified_rerender_gives_the_same_bytes_and_still_verifies(folder: Path, original: Path,
                                                                     tmp_path: Path) -> None:
    code, _, stderr = run("report", folder)
    assert code == 0, stderr
    assert contents(folder) == contents(original)  # manifest.json, report.html and report.pdf included
    assert verified(folder)[0] == 0
    # Into another folder: report.json is copied and a manifest written there, which verifies.
    code, _, stderr = run("report", folder, "--html", "--out", tmp_path / "copy")
    assert code == 0, stderr
    copy = contents(tmp_path / "copy")
    assert sorted(copy) == ["manifest.json", "report.html", "report.json", "sample_size_curve.png",
                            "score_histograms.png", "scores.csv", "thumbnails.png"]
    assert all(copy[name] == (original / name).read_bytes() for name in copy if name != "manifest.json")
    code, payload = verified(tmp_path / "copy")
    assert code == 0 and payload["matched"] == 138 and payload["unlisted"] == []


def test_rendering_one_format_keeps_the_other_documents_hash(folder: Path) -> None:
    """A tampered report.pdf must not pass because only the HTML was rendered again."""
    pdf = folder / "report.pdf"
    pdf.write_bytes(pdf.read_bytes() + b"%")
    code, _, stderr = run("report", folder, "--html")
    assert code == 0, stderr
    code, payload = verified(folder)
    assert code == 3 and (payload["changed"], payload["missing"]) == (["report.pdf"], [])


def test_report_leaves_out_a_search_the_manifest_does_not_list(folder: Path) -> None:
    result = AuditResult.model_validate_json((folder / "report.json").read_bytes())
    (folder / "evidence.json").write_text(json.dumps({
        "model": {"fingerprint": result.model.fingerprint},
        "generations": {"pool": 8, "guided": 8, "clusters": 2, "cohesive_clusters": 2},
        "share_comparison": None, "images": [{"role": "suspect", "similarity": 0.99}], "notes": [],
    }))
    code, _, stderr = run("report", folder, "--pdf")
    assert code == 0, stderr
    assert f"warning: {folder / 'evidence.json'} is not in the manifest; the report leaves the search out" in stderr
    assert "Extraction evidence" not in pdf_text(folder / "report.pdf")
    code, payload = verified(folder)
    assert code == 0 and payload["unlisted"] == ["evidence.json"]


def test_a_report_or_manifest_of_another_schema_version_is_named(folder: Path) -> None:
    from cdi_audit import __version__

    report = folder / "report.json"
    report.write_text(report.read_text().replace('"schema_version": "2"', '"schema_version": "9"', 1))
    code, _, stderr = run("report", folder)
    assert code == 3
    assert stderr == (f"error: {report} is a cdi-audit report of schema version 9, and cdi-audit {__version__} "
                      "reads schema version 2; use the cdi-audit version that wrote it.")
    manifest = folder / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"schema_version": "3"', '"schema_version": "7"', 1))
    code, _, stderr = run("verify", folder)
    assert code == 3
    assert stderr == (f"error: {manifest} is a cdi-audit manifest of schema version 7, and cdi-audit {__version__} "
                      "reads schema version 1, 2 or 3; use the cdi-audit version that wrote it.")


def test_an_older_manifest_without_outputs_still_verifies(folder: Path) -> None:
    path = folder / "manifest.json"
    manifest = Manifest.model_validate_json(path.read_bytes())
    older = manifest.model_copy(update={"schema_version": "2",
                                        "files": [entry for entry in manifest.files if entry.role != "output"]})
    path.write_text(older.model_dump_json(indent=2))
    code, payload = verified(folder)
    assert code == 0 and payload["matched"] == 133 and payload["unlisted"] == OUTPUTS


def test_documents_show_control_and_bidi_characters_as_escapes(original: Path, tmp_path: Path) -> None:
    result = AuditResult.model_validate_json((original / "report.json").read_bytes())
    manifest = documented_manifest(Manifest.model_validate_json((original / "manifest.json").read_bytes()))
    hostile = "\x1b[31mfake\u202egnp.exe\nline\u2066x\u0085y"
    adapter = AdapterInfo(path=f"/loras/{hostile}.safetensors", sha256="a" * 64, scale=1.0,
                          claims=TrainingClaims(training_comment=f"trained on {hostile}"))
    crafted = result.model_copy(update={
        "suspect_dir": hostile, "warnings": [f"warning about {hostile}"],
        "model": result.model.model_copy(update={"adapters": [adapter]}),
    })
    write_reports(crafted, manifest, tmp_path, ("html", "pdf"), None)
    page = (tmp_path / "report.html").read_text()
    text = pdf_text(tmp_path / "report.pdf")
    escaped = "\\x1b[31mfake\\u202egnp.exe\\nline\\u2066x\\x85y"
    for rendered in (page, text):
        assert not any(character in rendered for character in "\x1b\u202e\u2066\x85")
    assert f"trained on {escaped}" in page and f"warning about {escaped}" in page
    assert f"{escaped}.safetensors" in page
    assert f"trained on {escaped}" in text
