"""Rebuild sample_data/: a small, real audit that runs on a CPU in seconds.

Three folders of 32x32 crops drawn from the same pool of photographs that ship
inside scikit-learn and scikit-image (no download), and a tiny DDPM trained on
one of them:

  published/    the owner's images the model was trained on (suspect set P)
  unpublished/  same distribution, never trained on (reference set U)
  other/        same distribution, never trained on (a second null set)
  model/        DDPMPipeline folder (UNet2DModel + DDPMScheduler), safetensors

Every random choice comes from ``--seed``; with the same torch build and thread
count the script rebuilds byte-identical files. Takes about 15 minutes on two
CPU cores (``--steps`` trades time for how strongly the model memorises: at
6,000 steps it also generates recognisable copies of some published images,
which ``cdi-audit extract-evidence`` finds; at 3,000 its membership signal was
as strong but its generations copied nothing).

    python sample_data/make_sample_data.py [--out sample_data] [--steps 6000]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGES_PER_FOLDER = 64
FOLDERS = ("published", "unpublished", "other")
CROP_SIZE = 32
THREADS = 2


def source_photographs() -> list[np.ndarray]:
    """Colour photographs that ship inside scikit-learn and scikit-image, as uint8 HxWx3."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    for name in (
        "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
        "immunohistochemistry", "retina",
    ):
        photos.append(getattr(skimage.data, name)())
    # Only the left view: the right one is a near-copy of it.
    photos.append(skimage.data.stereo_motorcycle()[0])
    return photos


def random_crops(photos: list[np.ndarray], count: int, rng: np.random.Generator) -> list[Image.Image]:
    """Distinct natural crops: multi-scale square crops, resized with Lanczos, random flip.

    Flat patches (pixel std < 0.06) and near-duplicates (RMS distance < 0.05 on
    [0, 1]) are rejected, so no two images in the three folders are copies.
    """
    crops: list[Image.Image] = []
    kept = np.empty((0, CROP_SIZE * CROP_SIZE * 3))
    while len(crops) < count:
        photo = photos[rng.integers(len(photos))]
        height, width = photo.shape[:2]
        side = int(rng.uniform(0.08, 0.45) * min(height, width))
        top = rng.integers(0, height - side + 1)
        left = rng.integers(0, width - side + 1)
        patch = Image.fromarray(photo[top : top + side, left : left + side])
        patch = patch.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        values = np.asarray(patch, dtype=np.float64).reshape(-1) / 255.0
        if values.std() < 0.06:
            continue
        if len(kept) and np.sqrt(((kept - values) ** 2).mean(axis=1)).min() < 0.05:
            continue
        crops.append(patch)
        kept = np.vstack([kept, values])
    return crops


def tiny_unet(sample_size: int):
    """The "xs" UNet the tests and the sample use: 0.27 M parameters, small enough to train on a CPU."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        norm_num_groups=8,
    )


def to_model_input(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> float tensor (N, 3, H, W) in [-1, 1]."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def train_ddpm(images: torch.Tensor, steps: int, seed: int, batch_size: int = 32, lr: float = 2e-3,
               on_step=None, unet=None, first_step: int = 0):
    """Train the xs UNet on ``images`` (N, 3, S, S) in [-1, 1] with the DDPM noise-prediction loss;
    ``on_step(step, unet, scheduler)``, if given, is called after every step (checkpoints). ``unet``: a UNet to
    continue training from step ``first_step`` (a fresh optimiser state; the random stream is seeded by both).

    Returns (unet, scheduler). Epochs over the member set, not steps, are what
    make the model memorise: 64 images, 6,000 steps = 3,000 epochs.
    """
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed if first_step == 0 else seed * 1_000_003 + first_step)
    unet = tiny_unet(images.shape[-1]) if unet is None else unet
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr)
    order = torch.randperm(len(images), generator=generator)
    position = 0
    unet.train()
    for step in range(first_step, steps):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(images), generator=generator), 0
        batch = images[order[position : position + batch_size]]
        position += batch_size
        noise = torch.randn(batch.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), generator=generator)
        noisy = scheduler.add_noise(batch, noise, timesteps)
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step + 1, unet, scheduler)
    unet.eval()
    return unet, scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from diffusers import DDPMPipeline

    torch.set_num_threads(THREADS)
    rng = np.random.default_rng(args.seed)
    crops = random_crops(source_photographs(), IMAGES_PER_FOLDER * len(FOLDERS), rng)
    folders = {name: crops[index :: len(FOLDERS)] for index, name in enumerate(FOLDERS)}
    for name, images in folders.items():
        folder = args.out / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for number, image in enumerate(images):
            image.save(folder / f"{name}_{number:03d}.png", optimize=True)

    unet, scheduler = train_ddpm(to_model_input(folders["published"]), args.steps, args.seed)
    model_dir = args.out / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(model_dir, safe_serialization=True)
    print(f"wrote {sum(len(v) for v in folders.values())} images and {model_dir}")


if __name__ == "__main__":
    main()
