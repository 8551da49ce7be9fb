"""Shared fixtures: tiny models built in seconds, image folders, the shipped sample audit.

Threads: everything runs in this one process, so torch may use both cores;
joblib workers (permutation tests) run when torch is idle and take one
thread each.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"


def write_images(folder: Path, count: int, seed: int, size: int = 20, prefix: str = "img") -> list[Path]:
    """``count`` distinct smooth colour images (PNG) in ``folder``; not square, to exercise the crop."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        coarse = rng.uniform(0, 255, size=(4, 5, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((size + 4, size), Image.Resampling.BICUBIC)
        path = folder / f"{prefix}_{index:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def save_tiny_pipeline(folder: Path, sample_size: int = 16, seed: int = 0, **scheduler_config) -> Path:
    """A randomly initialised xs UNet2DModel + DDPMScheduler, saved as DDPMPipeline does (safetensors)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32),
        layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
        norm_num_groups=8,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000, **scheduler_config)).save_pretrained(
        folder, safe_serialization=True
    )
    return folder


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any socket connection fails the test: loading must be offline."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "ddpm")


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A suspect and a reference folder of 12 distinct images each (the smallest sets worth testing)."""
    root = tmp_path_factory.mktemp("images")
    write_images(root / "suspect", 12, seed=1, prefix="s")
    write_images(root / "reference", 12, seed=2, prefix="r")
    return root / "suspect", root / "reference"


def _sample_data_builder():
    """sample_data/make_sample_data.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sample_data", SAMPLE_DATA / "make_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def trained_tiny_model() -> tuple[Path, Path, Path]:
    """(model, members, non-members): a 16 px xs DDPM trained 400 steps on 32 images, and 40 it never saw.

    Built once into .test-models/ (about 30 s on two cores); a membership signal that a 10-vs-10 audit does not
    always find and a 32-vs-32 one does. Read-only: a test that changes these files works on a copy.
    """
    from fixture_cache import cached_build
    from trained_models import IMAGE_INPUTS, LIBRARIES, tiny_ddpm

    root = cached_build("tiny-ddpm", tiny_ddpm, (Path(__file__), SAMPLE_DATA / "make_sample_data.py", *IMAGE_INPUTS),
                        libraries=LIBRARIES)
    return root / "model", root / "members", root / "nonmembers"


@pytest.fixture(scope="session")
def trained_text_to_image() -> Path:
    """A tiny Stable Diffusion pipeline whose UNet was trained 600 steps on ``members/`` (32 captioned
    shapes), beside ``nonmembers/`` and ``other/`` (32 each, never trained on). Built once into .test-models/
    (about 40 s on two cores); read-only."""
    from fixture_cache import cached_build
    from trained_models import IMAGE_INPUTS, LIBRARIES, TESTS, text_to_image

    return cached_build("text-to-image", text_to_image, (TESTS / "tiny_pipelines.py", *IMAGE_INPUTS),
                        libraries=LIBRARIES)


@pytest.fixture(scope="session")
def sample_audit(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, Path]:
    """(exit code, JSON result, output folder) of the README's audit of the shipped sample (published vs
    unpublished, default test and permutations), written with --out."""
    import json

    from typer.testing import CliRunner

    from cdi_audit.cli import app

    root = tmp_path_factory.mktemp("sample-audit")
    result = CliRunner().invoke(app, [
        "check", str(SAMPLE_DATA / "published"), "--reference", str(SAMPLE_DATA / "unpublished"),
        "--model", str(SAMPLE_DATA / "model"), "--cache-dir", str(root / "cache"), "--json", "--jobs", "2",
        "--out", str(root / "out"),
    ])
    return result.exit_code, json.loads(result.stdout), root / "out"
