"""Audits of a LoRA trained on known images, on a base trained on other known images: calibrated against the
base by default (the adapter's per-image change), uncalibrated with --no-calibration, and the null rate of the
calibrated features.

Two bases, as benchmarks/lora_calibration.py measured them: a *broad* one (trained on 224 images, so it
generalises and its per-image loss says how hard an image is) with a LoRA trained on ``lora_members/``; and
``trained_text_to_image`` (trained hard on its ``members/``) with a LoRA trained on its ``other/``, for a
base that saw the suspect images when the adapter did not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from null_audits import null_rejections
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.features.table import LOG_OFFSET, FeatureTable, calibrated

CPU = torch.device("cpu")


def test_calibrated_columns_are_the_features_and_their_per_image_change_on_the_scoring_scale() -> None:
    """The adapted model's features, then adapted minus base per image, matched by key (not position), norms
    logged (their change a log ratio), only the columns both have; the result needs no further log."""
    adapted = FeatureTable(keys=("a", "b"), columns=("loss", "norm", "extra"),
                           values=np.array([[1.0, 4.0, 7.0], [2.0, 9.0, 8.0]]), log_columns=frozenset({"norm"}))
    base = FeatureTable(keys=("b", "a"), columns=("norm", "loss"), values=np.array([[3.0, 0.5], [2.0, 1.5]]),
                        log_columns=frozenset({"norm"}))
    table = calibrated(adapted, base)
    assert table.columns == ("loss", "norm", "loss_minus_base", "norm_minus_base")
    assert table.log_columns == frozenset()
    log = lambda value: np.log(value + LOG_OFFSET)  # noqa: E731
    expected = np.array([[1.0, log(4), 1.0 - 1.5, log(4) - log(2)],
                         [2.0, log(9), 2.0 - 0.5, log(9) - log(3)]])
    np.testing.assert_allclose(table.rows(["a", "b"]), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(table.scoring_matrix(["a", "b"]), table.rows(["a", "b"]))


@pytest.fixture(scope="module")
def broad_lora() -> tuple[Path, Path, Path]:
    """(root, a LoRA trained 400 steps on root/lora_members, the same in kohya format); root/model is a base
    trained 400 steps on 224 captioned shapes, root/nonmembers and root/unseen (32 and 64) neither saw. Built once
    into .test-models/ (about 90 s on two cores); read-only."""
    from fixture_cache import cached_build
    from trained_models import IMAGE_INPUTS, LIBRARIES, TESTS, broad_lora

    root = cached_build("broad-lora", broad_lora, (TESTS / "tiny_pipelines.py", TESTS / "tiny_lora.py", *IMAGE_INPUTS),
                        libraries=LIBRARIES)
    return root, root / "diffusers" / "pytorch_lora_weights.safetensors", root / "kohya.safetensors"


@pytest.fixture(scope="module")
def lora_elsewhere(trained_text_to_image: Path) -> Path:
    """A LoRA trained 400 steps on other/ of trained_text_to_image, whose base was trained on members/. Built once
    into .test-models/ for that base (its cache folder's name, which holds its key, is part of this key)."""
    from fixture_cache import cached_build
    from trained_models import IMAGE_INPUTS, LIBRARIES, TESTS, lora_on

    folder = cached_build("lora-elsewhere", lora_on(trained_text_to_image / "model", trained_text_to_image / "other"),
                          (TESTS / "tiny_pipelines.py", TESTS / "tiny_lora.py", *IMAGE_INPUTS),
                          base=trained_text_to_image.name, libraries=LIBRARIES)
    return folder / "pytorch_lora_weights.safetensors"


def audit(root: Path, suspect: str, cache: Path, *extra: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [
        "check", str(root / suspect), "--reference", str(root / "nonmembers"), "--model", str(root / "model"),
        "--json", "--cache-dir", str(cache), "--permutations", "200", "--curve-resamples", "0", "--jobs", "1",
        *extra])
    assert result.exit_code in (0, 1, 5), result.stdout + result.stderr
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.slow
def test_a_lora_is_found_on_its_members_calibrated_and_the_base_alone_finds_nothing(broad_lora, tmp_path) -> None:
    """The adapter's members against images neither model saw: evidence, calibrated against the base, with the
    base's own audit beside it (no evidence); the base alone: no evidence; two sets neither saw, through the
    adapter: no evidence."""
    root, lora, _ = broad_lora
    code, adapted = audit(root, "lora_members", tmp_path / "cache", "--adapter", str(lora))
    assert (code, adapted["verdict"], adapted["calibration"]) == (1, "evidence", "base"), adapted["verdict_reason"]
    changes = [name for name in adapted["features"] if name.endswith("_minus_base")]
    assert changes and len(changes) * 2 == len(adapted["features"])
    base_result = adapted["controls"]["control_model"]
    assert base_result["model"]["adapters"] == [] and base_result["p_value"] >= 0.01 and base_result["passed"]
    code, alone = audit(root, "lora_members", tmp_path / "cache")
    assert (code, alone["verdict"]) == (0, "no_evidence")
    # The base's own audit is the base-alone audit: the same features (cached), the same p-value.
    assert alone["p_value"] == base_result["p_value"] and alone["calibration"] is None
    assert alone["extraction"]["images_from_cache"] == alone["n_suspect"] + alone["n_reference"]
    # Two sets the adapter never saw: no evidence, calibrated.
    code, unseen = audit(root, "unseen", tmp_path / "cache", "--adapter", str(lora))
    assert (code, unseen["verdict"], unseen["calibration"]) == (0, "no_evidence", "base"), unseen["verdict_reason"]


def fused_folder(root: Path, lora: Path, out: Path) -> Path:
    """The base with the adapter fused, saved as a pipeline folder by diffusers itself."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(root / "model", local_files_only=True)
    pipeline.load_lora_weights(str(lora))
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()
    pipeline.save_pretrained(out, safe_serialization=True)
    return out


@pytest.mark.slow
def test_kohya_and_diffusers_files_and_the_fused_folder_give_the_same_audit(broad_lora, tmp_path) -> None:
    """The same adapter in kohya's format gives the diffusers file's features (float32 tolerance), verdict and
    p-value; uncalibrated (--no-calibration), it gives the p-value of diffusers' fused folder as --model."""
    root, lora, kohya = broad_lora
    results = {name: audit(root, "lora_members", tmp_path / "cache", "--adapter", str(path), "--no-cache")[1]
               for name, path in (("diffusers", lora), ("kohya", kohya))}
    first, second = results["diffusers"], results["kohya"]
    assert (first["verdict"], first["p_value"]) == (second["verdict"], second["p_value"])
    np.testing.assert_allclose([image["score"] for image in first["images"]],
                               [image["score"] for image in second["images"]], rtol=0, atol=1e-5)
    _, uncalibrated = audit(root, "lora_members", tmp_path / "cache", "--adapter", str(lora), "--no-calibration")
    assert uncalibrated["calibration"] is None and not any(name.endswith("_minus_base")
                                                           for name in uncalibrated["features"])
    assert uncalibrated["controls"]["control_model"]["model"]["adapters"] == []
    fused = fused_folder(root, lora, tmp_path / "fused")
    result = CliRunner().invoke(app, [
        "check", str(root / "lora_members"), "--reference", str(root / "nonmembers"), "--model", str(fused), "--json",
        "--no-cache", "--permutations", "200", "--curve-resamples", "0", "--jobs", "1"])
    from_folder = json.loads(result.stdout)
    assert (from_folder["verdict"], from_folder["p_value"]) == (uncalibrated["verdict"], uncalibrated["p_value"])
    np.testing.assert_allclose([image["score"] for image in from_folder["images"]],
                               [image["score"] for image in uncalibrated["images"]], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_base_that_saw_the_suspect_images_is_not_laid_to_an_adapter_trained_elsewhere(
        trained_text_to_image, lora_elsewhere, tmp_path) -> None:
    """members/ trained the base, not the adapter: the base alone gives evidence; the adapter audit does not. Its
    calibrated columns do separate the sets (a base that memorised the images makes any adapter change them
    differently), but not beyond the base's own effect, so the rule of verdict/control_model.py makes it
    inconclusive (exit 5), never evidence."""
    root, lora = trained_text_to_image, lora_elsewhere
    code, alone = audit(root, "members", tmp_path / "cache")
    assert (code, alone["verdict"]) == (1, "evidence")
    code, adapted = audit(root, "members", tmp_path / "cache", "--adapter", str(lora))
    assert (code, adapted["verdict"], adapted["calibration"]) == (5, "inconclusive", "base")
    assert "not clearly more than on the base model" in adapted["verdict_reason"]
    base_result = adapted["controls"]["control_model"]
    assert base_result["p_value"] == alone["p_value"] and base_result["separates_sets"]


@pytest.mark.slow
def test_null_audits_of_calibrated_features_keep_their_false_positive_rate(broad_lora) -> None:
    """200 null audits on the calibrated columns: 20 vs 20 drawn from 96 images neither the base nor the adapter
    saw, permutation test at alpha 0.05 (B = 100); the rejections stay within the binomial 99.9% bound."""
    from scipy import stats

    from cdi_audit.features.registry import extractors_for
    from cdi_audit.inputs.conditions import with_captions
    from cdi_audit.inputs.images import scan_image_set
    from cdi_audit.models.adapters import Adapter
    from cdi_audit.models.loading import load_target
    from cdi_audit.pipeline.extraction import extract_features

    root, lora, _ = broad_lora
    records = [record for folder in (root / "nonmembers", root / "unseen")
               for record in with_captions(scan_image_set(folder))[0].records]
    tables = []
    for adapters in ((Adapter(lora),), ()):
        target = load_target(root / "model", CPU, adapters=adapters)
        extractors, _ = extractors_for("auto", target)
        tables.append(extract_features(records, target, extractors, seed=0, batch_size=32)[0])
    table = calibrated(*tables)
    keys = [record.key for record in records]
    matrix = table.scoring_matrix(keys)
    width = len(tables[0].columns)
    assert matrix.shape == (96, 2 * width) and np.abs(matrix[:, width:]).max() > 0
    rejections = null_rejections(matrix, stream=23)
    assert rejections <= stats.binom.ppf(0.999, 200, 0.05), rejections


def synthetic_adapter_audit(seed: int, n: int = 64, effect: float = 0.075, columns: int = 8):
    """(calibrated table, base table, suspect keys, reference keys) of a simulated adapter audit: a per-image
    difficulty shared by every column (the base's values), the adapter's own change of every image, and a
    lowering of ``effect`` on its n members; the base saw neither set."""
    rng = np.random.default_rng([5, seed])
    difficulty = rng.normal(size=(2 * n, 1))
    base = difficulty * rng.uniform(0.5, 1.5, size=(1, columns)) + rng.normal(scale=0.5, size=(2 * n, columns))
    change = rng.normal(scale=0.3, size=(2 * n, columns))
    change[:n] -= effect
    keys = tuple(f"image{i}" for i in range(2 * n))
    names = tuple(f"loss{j}" for j in range(columns))
    adapted_table = FeatureTable(keys=keys, columns=names, values=base + change, log_columns=frozenset())
    base_table = FeatureTable(keys=keys, columns=names, values=base, log_columns=frozenset())
    return calibrated(adapted_table, base_table), base_table, list(keys[:n]), list(keys[n:])


@pytest.mark.slow
def test_the_base_gate_keeps_most_evidence_of_a_weak_adapter_when_the_base_saw_nothing() -> None:
    """100 simulated adapter audits, 64 images per set, calibrated AUC about 0.64 (B = 200, alpha 0.01): the
    comparison with the base (which saw neither set) keeps at least 60% of the audits that find evidence
    without it (measured: 37 without, 26 with, median AUC 0.643)."""
    from cdi_audit.verdict.control_model import judge_with_control
    from cdi_audit.verdict.decision import decide

    found = kept = 0
    aucs = []
    for seed in range(100):
        table, base, suspect, reference = synthetic_adapter_audit(seed)
        decision = decide(table, suspect, reference, alpha=0.01, test="permutation", seed=seed, permutations=200,
                          curve_resamples=0)
        aucs.append(decision.effect.auc)
        if decision.verdict != "evidence":
            continue
        base_decision = decide(base, suspect, reference, alpha=0.01, test="permutation", seed=seed,
                               permutations=200, curve_resamples=0)
        judged, _ = judge_with_control(decision, base_decision, 0.01, seed, against_base=True)
        found += 1
        kept += judged.verdict == "evidence"
    assert 0.62 < np.median(aucs) < 0.67
    assert found >= 25 and kept >= 0.6 * found, (found, kept)


@pytest.mark.slow
def test_the_worked_example_of_the_lora_guide_gives_what_it_shows(tmp_path) -> None:
    """docs/lora.md on sample_data/lora/: the adapter trained on published/ is found calibrated (exit 1, the
    base beside it finds nothing) and not without calibration; the base alone finds nothing."""
    from conftest import SAMPLE_DATA

    command = ["check", str(SAMPLE_DATA / "published"), "--reference", str(SAMPLE_DATA / "unpublished"),
               "--model", str(SAMPLE_DATA / "lora" / "base"), "--caption", "a photograph", "--json",
               "--cache-dir", str(tmp_path / "cache"), "--jobs", "2"]
    adapter = ["--adapter", str(SAMPLE_DATA / "lora" / "published_style.safetensors")]
    runs = {name: CliRunner().invoke(app, command + extra)
            for name, extra in (("calibrated", adapter), ("uncalibrated", [*adapter, "--no-calibration"]),
                                ("base", []))}
    results = {name: json.loads(run.stdout) for name, run in runs.items()}
    assert [runs[name].exit_code for name in runs] == [1, 0, 0]
    calibrated_result = results["calibrated"]
    assert calibrated_result["p_value"] < 0.01 and calibrated_result["effect"]["auc"] > 0.7
    assert calibrated_result["controls"]["control_model"]["p_value"] == results["base"]["p_value"] > 0.1
    assert results["uncalibrated"]["p_value"] > 0.1
