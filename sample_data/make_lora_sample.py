"""Build ``sample_data/lora/``: a tiny Stable Diffusion base and a LoRA trained on ``published/``.

    python sample_data/make_lora_sample.py

- ``lora/base/``: a text-to-image pipeline (16 px, 4x8x8 latents, UNet widths 16 and 32) whose UNet was
  trained 400 steps on 320 crops of the same photographs that are none of the shipped images (the crop
  generator of ``make_sample_data.py`` run on past the 192 it ships, so they are distinct from all of them);
  it never saw ``published/``, ``unpublished/`` or ``other/``;
- ``lora/published_style.safetensors``: a rank-4 LoRA on the base's UNet attention, trained 400 steps on
  ``published/`` (diffusers' format, as its training script saves it).

Every image is captioned "a photograph" (audit with ``--caption "a photograph"``). It reuses the test suite's
tiny pipelines (``tests/tiny_pipelines.py``, ``tests/tiny_lora.py``); about two minutes on two CPU cores.
The worked example in ``docs/lora.md`` audits these files.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
CAPTION = "a photograph"
BASE_IMAGES = 320


def base_training_crops(folder: Path) -> None:
    """The crops after the shipped 192 in make_sample_data's sequence (same seed), written to ``folder``; the
    first 192 are checked against the shipped files, so the base provably saw none of them."""
    from make_sample_data import FOLDERS, IMAGES_PER_FOLDER, random_crops, source_photographs
    from PIL import Image

    shipped = IMAGES_PER_FOLDER * len(FOLDERS)
    crops = random_crops(source_photographs(), shipped + BASE_IMAGES, np.random.default_rng(0))
    if not np.array_equal(np.asarray(crops[0]), np.asarray(Image.open(HERE / "published" / "published_000.png"))):
        raise SystemExit("the crop sequence no longer matches the shipped images; rebuild them first")
    folder.mkdir(parents=True)
    for number, crop in enumerate(crops[shipped:]):
        crop.save(folder / f"base_{number:03d}.png")


def main() -> None:
    from diffusers import StableDiffusionPipeline
    from tiny_lora import train_unet_lora
    from tiny_pipelines import train_tiny_text_to_image

    torch.set_num_threads(2)
    out = HERE / "lora"
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        base_training_crops(Path(scratch) / "crops")
        train_tiny_text_to_image(Path(scratch) / "crops", out / "base", steps=400, widths=(16, 32), caption=CAPTION)
    adapter = train_unet_lora(StableDiffusionPipeline, out / "base", HERE / "published", out / "adapter", steps=400,
                              caption=CAPTION)
    adapter.rename(out / "published_style.safetensors")
    shutil.rmtree(out / "adapter")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
