"""Batch audits: the same p-values as single checks, corrected together; models loaded once; the most
severe outcome decides the exit code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DATA
from scipy import stats
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.errors import SettingsProblem
from cdi_audit.pipeline.batch import adjust_p_values, batch_exit_code, holm, read_batch_file, run_batch, with_correction
from cdi_audit.pipeline.model_features import ModelPool
from cdi_audit.results.schema import AuditResult, BatchAudit

# One extractor (5 model calls per image instead of the fast preset's 54): what is tested here is the batch's
# plumbing, and the loss alone tells the sample's published images from the others by far (Welch t above 25).
OPTIONS = {"permutations": 200, "curve_resamples": 0, "features": "loss"}
SAMPLE_MODEL = SAMPLE_DATA / "model"
SAMPLE_AUDITS = (("published", "published", "unpublished"), ("other", "other", "unpublished"),
                 ("published-vs-other", "published", "other"))


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def write_batch(path: Path, audits: list[dict], defaults: dict | None = None) -> Path:
    def table(values: dict) -> str:
        return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())

    text = f"[defaults]\n{table(defaults)}\n" if defaults else ""
    text += "".join(f"[[audit]]\n{table(audit)}\n" for audit in audits)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def sample_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(batch file, cache) for three audits of the sample (the loss feature alone): two with the published
    images, one without."""
    root = tmp_path_factory.mktemp("batch")
    audits = [{"name": name, "suspect": f"sample/{suspect}", "reference": f"sample/{reference}"}
              for name, suspect, reference in SAMPLE_AUDITS]
    (root / "sample").symlink_to(SAMPLE_DATA)  # relative paths resolve against the batch file's folder
    return write_batch(root / "audits.toml", audits, {"model": "sample/model", **OPTIONS}), root / "cache"


def run_cli(*arguments: str):
    return CliRunner().invoke(app, [*arguments, "--jobs", "2"])


# With B = 200 the smallest p is 1/201: Benjamini-Hochberg keeps both findings (adjusted 0.0075), Holm's
# family-wise correction does not (3/201 = 0.015 > 0.01), so the batch then finds no evidence at all.
@pytest.mark.parametrize(("correction", "verdicts", "exit_code"), [
    ("bh", ["evidence", "no_evidence", "evidence"], 1),
    ("holm", ["no_evidence", "no_evidence", "no_evidence"], 0),
])
def test_a_batch_gives_the_single_checks_p_values_adjusted_together(
    sample_batch, correction: str, verdicts: list[str], exit_code: int, tmp_path: Path
) -> None:
    batch_file, cache = sample_batch
    result = run_cli("batch", str(batch_file), "--correction", correction, "--cache-dir", str(cache), "--json",
                     "--out", str(tmp_path), "--report", "none")
    batch = json.loads(result.stdout)
    singles = []
    for _, suspect, reference in SAMPLE_AUDITS:
        single = run_cli("check", str(SAMPLE_DATA / suspect), "--reference", str(SAMPLE_DATA / reference),
                         "--model", str(SAMPLE_DATA / "model"), "--permutations", "200", "--curve-resamples", "0",
                         "--features", "loss", "--cache-dir", str(cache), "--json")
        singles.append(json.loads(single.stdout))
    raw = [audit["p_value"] for audit in batch["audits"]]
    assert raw == [single["p_value"] for single in singles]
    expected = stats.false_discovery_control(raw) if correction == "bh" else holm(np.array(raw))
    np.testing.assert_allclose([audit["adjusted_p_value"] for audit in batch["audits"]], expected, rtol=1e-12)
    assert [single["verdict"] for single in singles] == ["evidence", "no_evidence", "evidence"]
    assert [audit["verdict"] for audit in batch["audits"]] == verdicts
    assert all((audit["adjusted_p_value"] < 0.01) == (audit["verdict"] == "evidence") for audit in batch["audits"])
    assert result.exit_code == batch["exit_code"] == exit_code
    # Each audit's folder holds its report, with the correction recorded.
    saved = AuditResult.model_validate_json((tmp_path / "published" / "report.json").read_text())
    assert saved.multiple_testing.correction == correction and saved.multiple_testing.family_size == 3
    assert saved.multiple_testing.adjusted_p_value == batch["audits"][0]["adjusted_p_value"]
    assert json.loads((tmp_path / "batch.json").read_text()) == batch
    # The features were extracted once: the singles read every image from the cache.
    assert all(single["extraction"]["model_calls"] == 0 for single in singles)
    assert "published-vs-other" in flat(result.stderr) and f"exit code {exit_code}" in result.stderr


def test_holm_is_the_step_down_rule() -> None:
    rng = np.random.default_rng(3)
    for size in (1, 2, 5, 12):
        p_values = rng.uniform(0, 0.2, size)
        p_values[rng.integers(size)] = p_values[0]  # a tie
        order = np.argsort(p_values, kind="stable")
        by_hand, running = np.empty(size), 0.0
        for rank, index in enumerate(order):
            running = max(running, min(1.0, (size - rank) * p_values[index]))
            by_hand[index] = running
        np.testing.assert_allclose(holm(p_values), by_hand, rtol=1e-15)
    assert adjust_p_values([0.01, 0.5], "none") == [0.01, 0.5]
    assert adjust_p_values([0.01, 0.04], "bh") == pytest.approx([0.02, 0.04])  # 0.01 * 2 / 1, 0.04 * 2 / 2


def test_the_correction_can_turn_evidence_into_no_evidence(sample_audit) -> None:
    _, payload, _ = sample_audit
    result = AuditResult.model_validate(payload)
    assert result.verdict == "evidence"
    lost = with_correction(result, 0.02, "bh", 4)
    assert lost.verdict == "no_evidence" and lost.multiple_testing.verdict_before == "evidence"
    assert "not after the Benjamini-Hochberg correction over 4 audits" in lost.verdict_reason
    kept = with_correction(result, 0.004, "holm", 4)
    assert kept.verdict == "evidence" and "stays significant after the Holm correction" in kept.verdict_reason
    inconclusive = result.model_copy(update={"verdict": "inconclusive"})
    assert with_correction(inconclusive, 0.001, "bh", 4).verdict == "inconclusive"


def audit_entry(verdict: str, code: int) -> BatchAudit:
    return BatchAudit(name="a", verdict=verdict, exit_code=code, p_value=None, adjusted_p_value=None)


def test_the_exit_code_is_the_most_severe_outcome() -> None:
    assert batch_exit_code([audit_entry("no_evidence", 0), audit_entry("evidence", 1)]) == 1
    assert batch_exit_code([audit_entry("evidence", 1), audit_entry("inconclusive", 5)]) == 5
    assert batch_exit_code([audit_entry("inconclusive", 5), audit_entry("error", 3)]) == 3
    assert batch_exit_code([audit_entry("error", 4), audit_entry("error", 3), audit_entry("no_evidence", 0)]) == 4
    assert batch_exit_code([audit_entry("no_evidence", 0)]) == 0


def test_models_are_loaded_once_and_a_failed_audit_does_not_stop_the_others(image_sets, tiny_model,
                                                                            tmp_path: Path) -> None:
    suspect, reference = image_sets
    batch_file = write_batch(tmp_path / "audits.toml", [
        {"name": "first", "suspect": str(suspect), "reference": str(reference)},
        {"name": "missing", "suspect": str(tmp_path / "nowhere"), "reference": str(reference)},
        {"name": "swapped", "suspect": str(reference), "reference": str(suspect), "seed": 3},
    ], {"model": str(tiny_model), "test": "split", "curve_resamples": 0, "features": "loss"})
    pool = ModelPool()
    entries = read_batch_file(batch_file, {"cache_dir": tmp_path / "cache", "n_jobs": 1})
    batch = run_batch(entries, batch_file, "bh", models=pool)
    assert pool.loads == 1
    assert [audit.verdict for audit in batch.audits][1] == "error"
    assert batch.audits[1].exit_code == 3 and "nowhere" in batch.audits[1].error
    assert batch.family_size == 2 and batch.exit_code == 3
    assert batch.audits[2].result.seed == 3 and batch.audits[0].result.seed == 0


@pytest.mark.parametrize(("content", "message"), [
    ('[[audit]]\nsuspect = "a"\nreference = "b"\nmodel = "m"\npermutaions = 10\n', "unknown key 'permutaions'"),
    ('[[audit]]\nname = "x"\nsuspect = "a"\nreference = "b"\n', "missing model"),
    ('[[audit]]\nname = "x"\nsuspect = "a"\nreference = "b"\nmodel = "m"\n[[audit]]\nname = "x"\nsuspect = "a"\n'
     'reference = "b"\nmodel = "m"\n', "the name 'x' is used twice"),
    ('[[audit]]\nsuspect = "a"\nreference = "b"\nmodel = "m"\nalpha = "high"\n',
     "audit 1 (audit-1): alpha must be a number (got 'high')"),
    ('[[audit]]\nsuspect = "a"\nreference = "b"\nmodel = "m"\npermutations = 50\n',
     "audit 1 (audit-1): permutations must be at least 100 for alpha = 0.01"),
    ('[[audit]\n', "not valid TOML"),
    ('[defaults]\nmodel = "m"\n', "lists no audits"),
    # Paths that do not exist, after the file's other mistakes; the image folders are each audit's own matter.
    ('[[audit]]\nname = "x"\nsuspect = "a"\nreference = "b"\nmodel = "m"\n', "audit 1 (x): the model "),
    ('[defaults]\nmodel = "m"\n[[audit]]\nsuspect = "a"\nreference = "b"\n', "audit 1 (audit-1): the model "),
    (f'[[audit]]\nname = "x"\nsuspect = "a"\nreference = "b"\nmodel = "{SAMPLE_MODEL}"\n'
     'control_model = "base"\n', "audit 1 (x): the control_model "),
    (f'[[audit]]\nname = "x"\nsuspect = "a"\nreference = "b"\nmodel = "{SAMPLE_MODEL}"\n'
     'model_config = "configs/sd"\n', "audit 1 (x): the model_config "),
    (f'[[audit]]\nname = "x"\nsuspect = "a"\nreference = "b"\nmodel = "{SAMPLE_MODEL}"\n'
     'model_config = "stable-diffusion-v3"\n', "'stable-diffusion-v3' is neither an existing path nor a shipped"),
])
def test_batch_files_with_mistakes_are_refused_with_the_reason(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "audits.toml"
    path.write_text(content)
    result = run_cli("batch", str(path))
    assert result.exit_code == 2
    assert message in flat(result.stderr)
    assert run_cli("batch", str(tmp_path / "absent.toml")).exit_code == 3


def test_a_misspelt_model_path_names_its_audit_and_path(tmp_path: Path) -> None:
    model = str(SAMPLE_DATA / "model")
    batch_file = write_batch(tmp_path / "audits.toml", [
        {"name": "fine", "suspect": "a", "reference": "b", "model_config": "stable-diffusion-v2"},
        {"name": "typo", "suspect": "a", "reference": "b", "model": "modles/house-style"},
    ], {"model": model})
    with pytest.raises(SettingsProblem) as raised:
        read_batch_file(batch_file)
    assert str(raised.value) == (
        f"{batch_file} audit 2 (typo): the model {tmp_path.resolve() / 'modles/house-style'} does not exist; "
        "correct it in the batch file (relative paths start at its folder).")
    assert raised.value.exit_code == 2
    # Missing image folders and shipped config names pass: each audit says so itself when it runs.
    batch_file = write_batch(tmp_path / "audits.toml", [
        {"name": "fine", "suspect": "a", "reference": "b", "model_config": "stable-diffusion-v2",
         "control_model": model}], {"model": model})
    [entry] = read_batch_file(batch_file)
    assert entry.settings.model.path == SAMPLE_DATA / "model" and str(entry.settings.model.config) == \
        "stable-diffusion-v2"
