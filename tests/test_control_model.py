"""The control model (--control-model): the same audit on a model that never saw the suspect images must find
nothing, and evidence needs the suspect model's effect to be the larger."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DATA
from pypdf import PdfReader
from scipy import stats
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import cdi_audit.verdict.decision as decision_module
from cdi_audit.cli import app
from cdi_audit.features.table import FeatureTable
from cdi_audit.statistics.testing import TestOutcome
from cdi_audit.verdict.control_model import auc_difference_interval, judge_with_control
from cdi_audit.verdict.controls import ShiftCheck
from cdi_audit.verdict.decision import decide

N = 30  # images per set in the synthetic tables


def hashes(n: int = N) -> tuple[list[str], list[str]]:
    keys = [f"{index:064d}" for index in range(2 * n)]
    return keys[:n], keys[n:]


def features(seed: int, shift: float = 0.0, n: int = N) -> FeatureTable:
    """Three positive columns; the first N rows (suspect) have their first column lowered by ``shift``."""
    rng = np.random.default_rng(seed)
    values = np.exp(rng.standard_normal((2 * n, 3)))
    values[:n, 0] *= np.exp(-shift)
    suspect, reference = hashes(n)
    return FeatureTable(tuple(suspect + reference), ("loss", "secmi", "pia"), values, frozenset({"loss"}))


def decision(seed: int, shift: float = 0.0, test: str = "permutation", n: int = N):
    suspect, reference = hashes(n)
    return decide(features(seed, shift, n), suspect, reference, alpha=0.01, test=test, seed=0, permutations=200,
                  curve_resamples=0)


def test_a_clean_control_keeps_evidence_and_says_so() -> None:
    suspect, control = decision(1, shift=1.5), decision(2)
    assert suspect.verdict == "evidence" and control.verdict == "no_evidence"
    judged, comparison = judge_with_control(suspect, control, 0.01, seed=0)
    assert judged.verdict == "evidence"
    assert comparison.passed is True and comparison.separates_sets is False
    assert comparison.auc_difference == pytest.approx(suspect.effect.auc - control.effect.auc)
    low, high = comparison.auc_difference_ci
    assert 0 < low < comparison.auc_difference < high
    assert judged.reason.startswith(suspect.reason)
    assert f"AUC {control.effect.auc:.3f}" in judged.reason


def test_a_control_that_separates_the_sets_as_well_blocks_evidence() -> None:
    suspect, control = decision(1, shift=1.5), decision(3, shift=1.5)
    assert suspect.verdict == "evidence" and control.outcome.p_value < 0.01
    judged, comparison = judge_with_control(suspect, control, 0.01, seed=0)
    assert comparison.separates_sets is True and comparison.auc_difference_ci[0] <= 0
    assert judged.verdict == "inconclusive" and comparison.passed is False
    assert "not clearly more than on the control model" in judged.reason
    assert "also tells the sets apart" in judged.reason


def test_a_suspect_effect_beyond_a_separating_control_is_still_evidence() -> None:
    """A base model that picks up a little (AUC 0.80 here) and a fine-tune far beyond it (0.99)."""
    suspect, control = decision(1, shift=3.0), decision(3, shift=0.9)
    assert control.outcome.p_value < 0.01
    judged, comparison = judge_with_control(suspect, control, 0.01, seed=0)
    assert comparison.separates_sets is True and comparison.auc_difference_ci[0] > 0
    assert judged.verdict == "evidence" and comparison.passed is True
    assert "the suspect model's is beyond it" in judged.reason


def test_no_evidence_beside_a_separating_control_says_the_reference_may_be_unfair() -> None:
    suspect, control = decision(4), decision(3, shift=1.5)
    judged, comparison = judge_with_control(suspect, control, 0.01, seed=0)
    assert judged.verdict == "no_evidence" and comparison.passed is True
    assert judged.reason.startswith(suspect.reason)
    assert "the reference set may not be a fair one" in judged.reason


def test_evidence_needs_an_effect_larger_than_the_control_beyond_chance() -> None:
    suspect, clean = decision(1, shift=1.5), decision(2)
    # A control whose scores nearly match the suspect model's: the same features with a little noise, so
    # the AUC difference is small and its interval straddles 0.
    suspect_keys, reference_keys = hashes()
    close = features(1, shift=1.5)
    noisy = replace(close, values=close.values * np.exp(0.05 * np.random.default_rng(7).standard_normal(
        close.values.shape)))
    similar = decide(noisy, suspect_keys, reference_keys, alpha=0.01, test="permutation", seed=0, permutations=200,
                     curve_resamples=0)
    judged, comparison = judge_with_control(suspect, similar, 0.01, seed=0)
    assert abs(comparison.auc_difference) < 0.05 and comparison.auc_difference_ci[0] <= 0
    assert comparison.level == pytest.approx(0.98)
    assert judged.verdict == "inconclusive" and comparison.passed is False
    assert "not clearly more than on the control model" in judged.reason
    assert judge_with_control(suspect, clean, 0.01, seed=0)[0].verdict == "evidence"


def test_no_evidence_stays_no_evidence_beside_a_clean_control() -> None:
    suspect, control = decision(4), decision(2)
    judged, comparison = judge_with_control(suspect, control, 0.01, seed=0)
    assert judged == suspect
    assert comparison.passed is True


def test_a_control_without_usable_scores_blocks_evidence() -> None:
    suspect_keys, reference_keys = hashes()
    flat = FeatureTable(tuple(suspect_keys + reference_keys), ("loss",), np.ones((2 * N, 1)), frozenset({"loss"}))
    control = decide(flat, suspect_keys, reference_keys, alpha=0.01, test="permutation", seed=0, permutations=200)
    suspect = decision(1, shift=1.5)
    judged, comparison = judge_with_control(suspect, control, 0.01, seed=0)
    assert judged.verdict == "inconclusive" and comparison.passed is None
    assert "no usable scores" in judged.reason
    no_signal = decision(4)
    assert judge_with_control(no_signal, control, 0.01, seed=0)[0] == no_signal


def test_a_failed_negative_control_on_the_control_model_blocks_evidence(monkeypatch: pytest.MonkeyPatch) -> None:
    suspect = decision(1, shift=1.5)
    failed = TestOutcome("permutation", 3.0, 0.002, np.zeros(2), np.array([True, False]), 100)
    monkeypatch.setattr(decision_module, "negative_control", lambda *args, **kwargs: failed)
    control = decision(2)
    judged, comparison = judge_with_control(suspect, control, 0.01, seed=0)
    assert judged.verdict == "inconclusive" and comparison.passed is False
    assert "negative control on the control model" in judged.reason


def test_an_inconclusive_suspect_result_keeps_its_own_reason() -> None:
    suspect_keys, reference_keys = hashes()
    shifted = ShiftCheck(p_value=0.001, alpha=0.05, most_different=())
    suspect = decide(features(1, 1.5), suspect_keys, reference_keys, alpha=0.01, test="permutation", seed=0,
                     permutations=200, curve_resamples=0, shift=shifted)
    judged, _ = judge_with_control(suspect, decision(2), 0.01, seed=0)
    assert judged == suspect and judged.verdict == "inconclusive"


def test_a_confound_both_models_see_does_not_become_evidence() -> None:
    """P and U differ in a way any model picks up (the control's features see the same shift as the
    suspect's). With the point estimate of the AUC difference, 49 to 89 of 200 such audits came out as
    evidence (split test, 30 per set, shifts 0.9 to 2.0). The bootstrap bound's one-sided level is alpha
    (1%) per audit, so evidence with the control stays within the binomial 99.9% bound of 60 audits at 1%
    (4): measured 1 of these 60, and 4 of 200 (seeds 100 to 199), against 0 of 200 with the split test's
    earlier halves."""
    alone = with_control = 0
    for seed in range(30):
        for shift in (0.9, 1.5):
            suspect, control = decision(100 + seed, shift, "split"), decision(200 + seed, shift, "split")
            alone += suspect.verdict == "evidence"
            with_control += judge_with_control(suspect, control, 0.01, seed)[0].verdict == "evidence"
    assert alone >= 25
    assert with_control <= stats.binom.ppf(0.999, 60, 0.01)


def test_the_auc_difference_interval_is_a_paired_stratified_bootstrap() -> None:
    rng = np.random.default_rng(5)
    labels = np.r_[np.ones(12, bool), np.zeros(15, bool)]
    first = TestOutcome("permutation", 1.0, 0.5, rng.random(27), labels)
    second = TestOutcome("permutation", 1.0, 0.5, rng.random(27), labels)
    low, high = auc_difference_interval(first, second, seed=9, level=0.95, resamples=300)
    # By hand: the same draws (the function's generator and order), each resample scored with sklearn.
    draws = np.random.default_rng([9, 3571])
    suspect_rows = draws.choice(np.flatnonzero(labels), (300, 12))
    reference_rows = draws.choice(np.flatnonzero(~labels), (300, 15))
    differences = []
    for drawn_suspect, drawn_reference in zip(suspect_rows, reference_rows, strict=True):
        truth = np.r_[np.ones(12), np.zeros(15)]
        rows = np.r_[drawn_suspect, drawn_reference]
        differences.append(roc_auc_score(truth, first.scores[rows]) - roc_auc_score(truth, second.scores[rows]))
    np.testing.assert_allclose((low, high), np.quantile(differences, [0.025, 0.975]), rtol=1e-12)
    assert auc_difference_interval(first, first, seed=9) == (0.0, 0.0)
    held_out = replace(second, rows=np.arange(27))
    assert auc_difference_interval(first, held_out, seed=9) is None


# End to end, on the shipped sample: its model saw `published`; a "base model" trained briefly on `other`
# never did.

@pytest.fixture(scope="module")
def base_model() -> Path:
    """A 32 px DDPM of the sample's architecture trained 300 steps on sample_data/other only (about 35 s, once,
    into .test-models/). Read-only."""
    from fixture_cache import cached_build
    from trained_models import IMAGE_INPUTS, TESTS, other_ddpm, sample_images

    return cached_build("other-ddpm", other_ddpm, (TESTS / "conftest.py", SAMPLE_DATA / "make_sample_data.py",
                                                   *IMAGE_INPUTS, *sample_images("other"))) / "model"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("control-cache")


def audit(model: Path, control: Path, cache: Path, *extra: str):
    return CliRunner().invoke(app, [
        "check", str(SAMPLE_DATA / "published"), "--reference", str(SAMPLE_DATA / "unpublished"),
        "--model", str(model), "--control-model", str(control), "--cache-dir", str(cache), "--jobs", "2", *extra,
    ])


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


@pytest.mark.slow
def test_the_sample_audit_with_a_clean_base_model_as_control_is_still_evidence(
    base_model: Path, cache: Path, tmp_path: Path
) -> None:
    result = audit(SAMPLE_DATA / "model", base_model, cache, "--json", "--out", str(tmp_path), "--report", "pdf")
    assert result.exit_code == 1, result.stderr
    report = json.loads(result.stdout)
    control = report["controls"]["control_model"]
    assert report["verdict"] == "evidence" and report["p_value"] < 0.01
    assert control["p_value"] >= 0.01 and control["separates_sets"] is False and control["passed"] is True
    assert control["auc_difference"] == pytest.approx(report["effect"]["auc"] - control["effect"]["auc"])
    assert control["auc_difference_ci"][0] > 0
    assert control["features"] == report["features"]
    assert control["model"]["fingerprint"] != report["model"]["fingerprint"]
    assert "timings_seconds" in report and "control_extract" in report["timings_seconds"]
    # The control model's files are in the manifest, with their real hashes.
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    control_files = {entry["path"]: entry["sha256"] for entry in manifest["files"] if entry["role"] == "control_model"}
    weights = next(path for path in control_files if path.endswith(".safetensors"))
    assert control_files[weights] == hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    # Terminal and PDF show both results.
    assert f"control model p = {control['p_value']:.3g}, AUC {control['effect']['auc']:.3f}" in flat(result.stderr)
    pdf = " ".join(" ".join(page.extract_text().split()) for page in PdfReader(tmp_path / "report.pdf").pages)
    assert f"{control['model']['path']}: p = {control['p_value']:.3g}, AUC {control['effect']['auc']:.3f}" in pdf
    assert "Control model" in pdf and control["model"]["fingerprint"] in pdf


@pytest.mark.slow
def test_a_control_that_saw_the_images_is_reported(base_model: Path, cache: Path) -> None:
    """Roles swapped: the 'control' is the sample model, which was trained on the suspect images. The
    suspect model finds nothing, and the verdict says the control does."""
    result = audit(base_model, SAMPLE_DATA / "model", cache, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    control = report["controls"]["control_model"]
    assert control["separates_sets"] is True and control["p_value"] < 0.01 and control["passed"] is True
    assert control["auc_difference"] < -0.3
    assert "the control model also tells the sets apart" in report["verdict_reason"]
    assert report["extraction"]["images_from_cache"] == 128  # both models' features came from the cache


def test_the_suspect_model_cannot_be_its_own_control(cache: Path) -> None:
    # One feature is enough: the refusals come after the suspect's extraction, whatever it extracts.
    result = audit(SAMPLE_DATA / "model", SAMPLE_DATA / "model", cache, "--features", "loss")
    assert result.exit_code == 2
    assert "same content fingerprint as the suspect model" in flat(result.stderr)
    result = audit(SAMPLE_DATA / "model", SAMPLE_DATA / "missing-model", cache, "--features", "loss")
    assert result.exit_code == 4
    assert "Control model" in flat(result.stderr)


def test_control_model_config_needs_a_control_model(image_sets, tiny_model) -> None:
    suspect, reference = image_sets
    result = CliRunner().invoke(app, [
        "check", str(suspect), "--reference", str(reference), "--model", str(tiny_model),
        "--control-model-config", "stable-diffusion-v2"])
    assert result.exit_code == 2
    assert "--control-model" in flat(result.stderr)


def test_a_black_box_audit_uses_its_control_black_box_too(image_sets, tiny_model, tmp_path: Path) -> None:
    """The control answers the same variation requests as the suspect, so both get the same features."""
    from conftest import save_tiny_pipeline

    suspect, reference = image_sets
    control = save_tiny_pipeline(tmp_path / "control", seed=1)
    result = CliRunner().invoke(app, [
        "check", str(suspect), "--reference", str(reference), "--model", str(tiny_model), "--access", "blackbox",
        "--control-model", str(control), "--cache-dir", str(tmp_path / "cache"), "--permutations", "200",
        "--curve-resamples", "0", "--json", "--jobs", "1"])
    assert result.exit_code in (0, 5), result.stderr
    report = json.loads(result.stdout)
    control_result = report["controls"]["control_model"]
    assert report["model"]["access"] == control_result["model"]["access"] == "black"
    assert control_result["features"] == report["features"]
    assert all(name.startswith("rediffuse") for name in report["features"])
    assert control_result["extraction"]["model_calls"] == report["extraction"]["model_calls"] > 0
