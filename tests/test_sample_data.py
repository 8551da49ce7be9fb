"""The shipped sample audit and the script that rebuilds it."""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from conftest import SAMPLE_DATA

from cdi_audit.inputs.images import scan_image_set
from cdi_audit.models.loading import load_target


def load_script():
    spec = importlib.util.spec_from_file_location("make_sample_data", SAMPLE_DATA / "make_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_folders_are_large_enough_and_disjoint() -> None:
    hashes = {}
    for folder in ("published", "unpublished", "other"):
        images = scan_image_set(SAMPLE_DATA / folder, strict=True)
        assert len(images) >= 64
        hashes[folder] = set(images.hashes)
    assert not (hashes["published"] & hashes["unpublished"]) and not (hashes["other"] & hashes["unpublished"])
    model_bytes = sum(path.stat().st_size for path in (SAMPLE_DATA / "model").rglob("*") if path.is_file())
    assert model_bytes < 4 * 2**20
    assert load_target(SAMPLE_DATA / "model", torch.device("cpu")).sample_size == 32


def test_crops_are_distinct_and_textured() -> None:
    script = load_script()
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(2)]
    crops = script.random_crops(photos, 20, np.random.default_rng(1))
    values = np.stack([np.asarray(crop, dtype=np.float64).reshape(-1) / 255 for crop in crops])
    assert all(crop.size == (32, 32) for crop in crops)
    distances = np.sqrt(((values[:, None] - values[None]) ** 2).mean(axis=2)) + np.eye(len(values))
    assert distances.min() >= 0.05 and values.std(axis=1).min() >= 0.06


def test_training_is_deterministic_for_a_seed() -> None:
    script = load_script()
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    first, _ = script.train_ddpm(images, steps=3, seed=7, batch_size=2)
    second, _ = script.train_ddpm(images, steps=3, seed=7, batch_size=2)
    third, _ = script.train_ddpm(images, steps=3, seed=8, batch_size=2)
    pairs = list(zip(first.parameters(), second.parameters(), third.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)
