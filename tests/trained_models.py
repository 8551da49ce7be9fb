"""Builders of the trained test models, for ``fixture_cache.cached_build``: each fills one folder (the model and
the images around it) and is called once per cache key, not once per pytest run.

They live in this module, not beside their fixtures, so that editing a test file does not retrain its model:
the cache key hashes this file (the builder's module), the files listed in ``sources`` for each, and
``LIBRARIES``. Everything a builder writes is part of the cached folder, so a test that changes files in one
must work on a copy.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SAMPLE_DATA = REPO / "sample_data"
# The package code the trainers read their images through: how pixels are cropped, scaled and captioned.
IMAGE_INPUTS = (REPO / "cdi_audit" / "inputs" / "images.py", REPO / "cdi_audit" / "inputs" / "conditions.py")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# Besides torch and diffusers (always in the key): what draws the images and builds the text encoders and LoRAs.
LIBRARIES = {package: _version(package) for package in ("numpy", "pillow", "transformers", "peft", "safetensors")}


def sample_images(source: str, count: int | None = None) -> list[Path]:
    """The first ``count`` images of ``sample_data/<source>``, in the audit's order."""
    from cdi_audit.inputs.images import scan_image_set

    return [record.path for record in scan_image_set(SAMPLE_DATA / source).records[:count]]


def _sample_data_script():
    from conftest import _sample_data_builder

    return _sample_data_builder()


def _save_ddpm(unet, scheduler, folder: Path) -> None:
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)


def tiny_ddpm(root: Path) -> None:
    """``members/`` (32 images), ``nonmembers/`` (40) and ``model/``: a 16 px xs DDPM trained 400 steps on the
    members (conftest's ``trained_tiny_model``)."""
    from conftest import write_images

    from cdi_audit.inputs.images import load_model_pixels, scan_image_set

    write_images(root / "members", 32, seed=11, prefix="m")
    write_images(root / "nonmembers", 40, seed=12, prefix="n")
    pixels = torch.from_numpy(load_model_pixels(scan_image_set(root / "members").records, 16))
    _save_ddpm(*_sample_data_script().train_ddpm(pixels, steps=400, seed=0), root / "model")


def text_to_image(root: Path) -> None:
    """``members/``, ``nonmembers/``, ``other/`` (32 captioned shapes each) and ``model/``: the tiny Stable
    Diffusion pipeline, its UNet trained 600 steps on the members (conftest's ``trained_text_to_image``)."""
    from tiny_pipelines import train_tiny_text_to_image, write_captioned_shapes

    for name, seed in (("members", 1), ("nonmembers", 2), ("other", 3)):
        write_captioned_shapes(root / name, 32, seed)
    train_tiny_text_to_image(root / "members", root / "model", steps=600)


def broad_lora(root: Path) -> None:
    """``model/``: a tiny Stable Diffusion base trained 400 steps on ``base_data/`` (224 captioned shapes);
    ``diffusers/pytorch_lora_weights.safetensors``: a LoRA on it trained 400 steps on ``lora_members/`` (32),
    also as ``kohya.safetensors``; ``nonmembers/`` and ``unseen/`` (32 and 64) neither saw."""
    from diffusers import StableDiffusionPipeline
    from tiny_lora import as_kohya, train_unet_lora
    from tiny_pipelines import train_tiny_text_to_image, write_captioned_shapes

    for name, count, seed in (("base_data", 224, 40), ("lora_members", 32, 41), ("nonmembers", 32, 42),
                              ("unseen", 64, 43)):
        write_captioned_shapes(root / name, count, seed)
    train_tiny_text_to_image(root / "base_data", root / "model", steps=400)
    lora = train_unet_lora(StableDiffusionPipeline, root / "model", root / "lora_members", root / "diffusers",
                           steps=400)
    as_kohya(lora, root / "kohya.safetensors")


def lora_on(base: Path, members: Path) -> Callable[[Path], None]:
    """The builder of ``pytorch_lora_weights.safetensors``: a LoRA trained 400 steps on ``members`` on the tiny
    Stable Diffusion pipeline ``base`` (test_lora_audits' ``lora_elsewhere``)."""

    def build(folder: Path) -> None:
        from diffusers import StableDiffusionPipeline
        from tiny_lora import train_unet_lora

        train_unet_lora(StableDiffusionPipeline, base, members, folder, steps=400)

    return build


def sdxl(root: Path) -> None:
    """``members/``, ``nonmembers/``, ``other/`` (32 captioned shapes each) and ``model/``: the tiny SDXL, its
    UNet trained 600 steps on the members (test_sdxl's ``trained_sdxl``)."""
    from family_checks import write_membership_folders
    from tiny_sdxl import train_tiny_sdxl

    write_membership_folders(root)
    train_tiny_sdxl(root / "members", root / "model", steps=600)


MEMORISED = 16  # sample images in each set of memorising_model


def memorising_ddpm(root: Path) -> None:
    """``suspect/`` and ``reference/``: the first 16 published and 16 unpublished sample images; ``model/``: a
    16 px xs DDPM trained 2,000 steps on the suspect images, which it reproduces (test_side_search's
    ``memorising_model``)."""
    from cdi_audit.inputs.images import load_model_pixels, scan_image_set

    for name, source in (("suspect", "published"), ("reference", "unpublished")):
        (root / name).mkdir()
        for image in sample_images(source, MEMORISED):
            (root / name / image.name).write_bytes(image.read_bytes())
    pixels = torch.from_numpy(load_model_pixels(scan_image_set(root / "suspect").records, 16))
    _save_ddpm(*_sample_data_script().train_ddpm(pixels, steps=2000, seed=0, batch_size=16), root / "model")


def other_ddpm(root: Path) -> None:
    """``model/``: a 32 px DDPM of the sample model's architecture trained 300 steps on ``sample_data/other``
    only (test_control_model's ``base_model``)."""
    from cdi_audit.inputs.images import load_model_pixels, scan_image_set

    pixels = torch.from_numpy(load_model_pixels(scan_image_set(SAMPLE_DATA / "other").records, 32))
    _save_ddpm(*_sample_data_script().train_ddpm(pixels, steps=300, seed=1), root / "model")
