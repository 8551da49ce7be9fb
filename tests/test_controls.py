"""The controls that keep a verdict honest (docs/method.md, "Controls"; issue 8): the model-free shift check
on a real shift trap and on same-distribution sets, and the near-duplicate screen."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _sample_data_builder
from PIL import Image
from scipy import stats
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.features.registry import extractors_for
from cdi_audit.inputs.image_statistics import STATISTIC_NAMES, describe_image, hamming, jpeg_quality
from cdi_audit.inputs.images import scan_image_set
from cdi_audit.models.loading import load_target
from cdi_audit.pipeline.extraction import extract_features
from cdi_audit.verdict.controls import shift_check
from cdi_audit.verdict.decision import decide
from cdi_audit.verdict.screening import describe_images, near_duplicates

POOL = 80  # crops per photo group
# Images per set in one simulated audit. On this trap the shift check caught 92.5% of 40 draws at 20 per set,
# 95% at 30 and 100% at 40 (B = 200); the trap test uses 40, the null test 20.
TRAP_DRAW = 40
NULL_DRAW = 20


def photo_groups() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The sample data's photographs in two groups of different subjects (warm portraits and objects
    against space, microscopy and machines): the same camera-free pipeline, different content."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    warm = [*load_sample_images().images, *(getattr(skimage.data, name)() for name in ("astronaut", "chelsea",
                                                                                      "coffee"))]
    cool = [getattr(skimage.data, name)() for name in ("rocket", "hubble_deep_field", "immunohistochemistry",
                                                      "retina")] + [skimage.data.stereo_motorcycle()[0]]
    return warm, cool


def write_crops(folder: Path, photos: list[np.ndarray], count: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    for index, crop in enumerate(_sample_data_builder().random_crops(photos, count, np.random.default_rng(seed))):
        crop.save(folder / f"crop_{index:03d}.png")
    return folder


@pytest.fixture(scope="module")
def crop_pools(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):
    """Two pools of 80 crops (one per photo group), a mixed pool of 160, their descriptions, and the denoising
    loss of every crop from a model trained on none of them (the shift check never looks at the model's
    features, and the verdict's rule is the same for any feature set)."""
    root = tmp_path_factory.mktemp("crops")
    warm, cool = photo_groups()
    folders = {"warm": write_crops(root / "warm", warm, POOL, 1), "cool": write_crops(root / "cool", cool, POOL, 2),
               "mixed": write_crops(root / "mixed", warm + cool, 2 * POOL, 3)}
    sets = {name: scan_image_set(folder) for name, folder in folders.items()}
    described = {name: describe_images(images, name) for name, images in sets.items()}
    target = load_target(tiny_model, torch.device("cpu"))
    extractors, _ = extractors_for("loss", target)
    records = [record for images in sets.values() for record in images.records]
    table, _ = extract_features(records, target, extractors, seed=0, batch_size=64)
    return folders, described, table


def draw(pool: list, rng: np.random.Generator, count: int) -> list:
    return [pool[i] for i in rng.choice(len(pool), count, replace=False)]


def simulated_audit(table, suspect, reference, seed: int):
    shift = shift_check(suspect, reference, alpha=0.05, seed=seed, permutations=200)
    decision = decide(table, [image.record.key for image in suspect], [image.record.key for image in reference],
                      alpha=0.01, test="permutation", seed=seed, permutations=200, curve_resamples=0, shift=shift)
    return shift, decision


def test_the_shift_trap_is_inconclusive_and_never_evidence(crop_pools) -> None:
    _, described, table = crop_pools
    verdicts, shift_p = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        shift, decision = simulated_audit(table, draw(described["warm"], rng, TRAP_DRAW),
                                          draw(described["cool"], rng, TRAP_DRAW), seed)
        verdicts.append(decision.verdict)
        shift_p.append(shift.p_value)
    assert verdicts.count("inconclusive") >= 19, shift_p
    assert "evidence" not in verdicts


def test_same_distribution_sets_pass_the_shift_check_at_its_level(crop_pools) -> None:
    _, described, table = crop_pools
    runs, rejections, evidence = 40, 0, 0
    for seed in range(runs):
        rng = np.random.default_rng(1000 + seed)
        chosen = draw(described["mixed"], rng, 2 * NULL_DRAW)
        shift, decision = simulated_audit(table, chosen[:NULL_DRAW], chosen[NULL_DRAW:], seed)
        rejections += not shift.passed
        evidence += decision.verdict == "evidence"
    assert rejections <= stats.binom.ppf(0.995, runs, 0.05)
    assert evidence <= stats.binom.ppf(0.995, runs, 0.01)


def test_the_cli_names_the_shift_and_exits_inconclusive(crop_pools, tiny_model: Path, tmp_path: Path) -> None:
    folders, _, _ = crop_pools
    result = CliRunner().invoke(app, ["check", str(folders["warm"]), "--reference", str(folders["cool"]),
                                      "--model", str(tiny_model), "--test", "split", "--json", "--no-cache",
                                      "--curve-resamples", "0", "--features", "loss"])
    payload = json.loads(result.stdout)
    controls = payload["controls"]
    assert (result.exit_code, payload["verdict"]) == (5, "inconclusive")
    assert controls["shift_passed"] is False and controls["shift_p_value"] < 0.05
    assert "told apart without the model" in payload["verdict_reason"]
    named = controls["shift_statistics"][0]["name"]
    assert named in STATISTIC_NAMES and named in payload["verdict_reason"]
    assert "shift check" in result.stderr and "FAILED at 0.05" in result.stderr


def test_a_reencoded_resized_reference_copy_in_the_suspect_set_is_found_and_removed(
        image_sets, tiny_model: Path, tmp_path: Path) -> None:
    suspect, reference = (Path(shutil.copytree(folder, tmp_path / name))
                          for folder, name in zip(image_sets, ("p", "u"), strict=True))
    original = sorted(reference.glob("*.png"))[3]
    with Image.open(original) as image:
        image.convert("RGB").resize((72, 60), Image.Resampling.BICUBIC).save(suspect / "copy.jpg", quality=75)
    assert hamming(describe_image(original).perceptual_hash, describe_image(suspect / "copy.jpg").perceptual_hash) <= 8
    result = CliRunner().invoke(app, ["check", str(suspect), "--reference", str(reference), "--model",
                                      str(tiny_model), "--test", "split", "--json", "--no-cache", "--features", "loss"])
    payload = json.loads(result.stdout)
    assert payload["n_suspect"] == 13 and payload["n_reference"] == 11
    (pair,) = payload["controls"]["near_duplicates"]
    assert (Path(pair["first_path"]).name, Path(pair["second_path"]).name, pair["removed"]) == (
        "copy.jpg", original.name, True)
    assert original.name not in {Path(image["path"]).name for image in payload["images"]}
    assert any("near-duplicates of suspect images" in warning for warning in payload["warnings"])


def test_near_duplicates_within_a_set_are_reported(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    write_crops(folder, photo_groups()[0], 6, seed=5)
    with Image.open(folder / "crop_003.png") as image:
        image.resize((64, 64), Image.Resampling.LANCZOS).save(folder / "crop_003_big.webp", quality=70)
    described = describe_images(scan_image_set(folder), "suspect")
    (pair,) = near_duplicates(described)
    assert (pair.first.record.path.name, pair.second.record.path.name) == ("crop_003.png", "crop_003_big.webp")
    assert pair.distance <= 8 and pair.correlation > 0.95


def test_image_statistics_measure_what_they_say(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "noise.jpg", quality=90)
    Image.fromarray(np.full((30, 30, 3), (255, 0, 0), np.uint8)).save(tmp_path / "red.png")
    noise = dict(zip(STATISTIC_NAMES, describe_image(tmp_path / "noise.jpg").statistics, strict=True))
    red = dict(zip(STATISTIC_NAMES, describe_image(tmp_path / "red.png").statistics, strict=True))
    with Image.open(tmp_path / "noise.jpg") as image:
        assert abs(jpeg_quality(image) - 90) <= 1
    assert noise["format_jpeg"] == 1 and red["format_png"] == 1 and red["jpeg_quality"] == 100
    assert noise["log_aspect"] == pytest.approx(np.log(60 / 40)) and red["log_aspect"] == 0
    assert red["log_bytes_per_pixel"] == pytest.approx(np.log((tmp_path / "red.png").stat().st_size / 900))
    assert (red["mean_red"], red["mean_green"], red["std_red"], red["saturation"]) == (1, 0, 0, 1)
    assert red["edge_density"] == 0 and red["high_frequency_energy"] == 0 and red["hue_entropy"] == 0
    assert noise["edge_density"] > 0.3 and noise["high_frequency_energy"] > 0.5  # white noise: mostly high
    assert noise["hue_entropy"] > 3.5  # close to log2(16) = 4 for uniform hues
