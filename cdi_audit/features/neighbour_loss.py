"""Difficulty calibration by neighbours: an image's denoising loss against that of slightly altered copies of it.

Most of the variance of a per-image loss is how hard the image is to denoise, not whether the model saw it;
on a model that memorises little it buries the signal (loss AUC 0.55 on the weak-signal benchmark). A copy of
the image mirrored or shifted by a few pixels is about as hard to denoise, but it is not what the model was
trained on. The difference loss(x) - loss(T(x)), with the same noise for both, cancels the difficulty and most
of the noise and keeps what the model learned of x itself. This is the neighbourhood comparison of membership
inference on language models and the complexity calibration of Rao & Moyer (2026), with the neighbour made by a
transformation instead of a second model.

The defaults, as measured on the weak-signal benchmark (512 members of a 32 px DDPM, two held-out sets of 512;
benchmarks/RESULTS.md, "Detection power, issue 22"):
- neighbours mirror and shift. Single-column AUCs at t = 50 with 2 draws: mirror 0.83, shift 0.77, a JPEG
  re-encode at quality 90 only 0.63, a Gaussian blur about 0.55. JPEG stays available but not by default: it is
  weak, and how it changes an image depends on how the file was compressed before, which can differ between
  published and unpublished files for reasons that have nothing to do with training.
- timesteps 50 and 100: 200 was weaker (mirror 0.79), and with six columns instead of four the audits of 10
  images per set reached p < 0.01 no more often (58% of 50 either way).
- 4 draws: against 2, the columns rose by 0.015-0.035 AUC (mirror at t = 100 from 0.82 to 0.85) and audits of 10
  per set reached p < 0.01 in 66% of 50 instead of 58%.

A model trained with an augmentation sees that transformation of its members too (random mirroring is common):
that neighbour then carries no signal, and the scoring model learns to ignore its column. Every column is a
function of the image alone (the noise is shared by all images), so the permutation test's guarantee is
untouched; the null audits and the shift-trap tests cover the columns through the presets.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from cdi_audit.blackbox.variation import pixels_to_uint8, uint8_to_pixels
from cdi_audit.features.base import Extractor, Forward, LatentBatch, NoiseSource, Plan, nominal_timestep_label
from cdi_audit.models.primitives import add_noise, per_image_norm
from cdi_audit.models.target import Target

# The shift moves the picture right by a 16th of its side and down by a 32nd, at least 2 and 1 pixels, and
# repeats the edge pixels into the strip it uncovers. On the benchmark (32 px, 8 draws, an early prototype) this
# separated members at AUC 0.80-0.81; reflecting the picture into the strip instead, 0.75-0.77, and a shift of
# 1 pixel, 0.73-0.75.
SHIFT_FRACTION = 16
JPEG_QUALITY = 90


def mirrored(images: torch.Tensor) -> torch.Tensor:
    return images.flip(-1)


def shifted(images: torch.Tensor) -> torch.Tensor:
    height, width = images.shape[-2:]
    right, down = max(2, width // SHIFT_FRACTION), max(1, height // (2 * SHIFT_FRACTION))
    padded = torch.nn.functional.pad(images, (right, 0, down, 0), mode="replicate")
    return padded[..., :height, :width]


def jpeg_encoded(images: torch.Tensor) -> torch.Tensor:
    decoded = []
    for image in pixels_to_uint8(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    return uint8_to_pixels(np.stack(decoded), images.device)


NEIGHBOURS = {"mirror": mirrored, "shift": shifted, "jpeg": jpeg_encoded}


class NeighbourLoss(Extractor):
    """loss(x) - loss(T(x)) for each neighbour T and timestep t: the loss ||eps_theta(z_t, t) - eps|| averaged
    over ``draws`` noise draws, each shared by the image and its neighbours.

    Negative for an image the model fitted better than its neighbours. Cost: (1 + neighbours) x timesteps x
    draws forward passes per image, and one autoencoder encoding per neighbour for a latent model.
    """

    name = "neighbour_loss"
    log_scaled = False  # differences of losses, of either sign

    def __init__(self, timesteps: tuple[int, ...] = (50, 100), neighbours: tuple[str, ...] = ("mirror", "shift"),
                 draws: int = 4) -> None:
        unknown = set(neighbours) - set(NEIGHBOURS)
        if unknown:
            raise ValueError(f"unknown neighbours {sorted(unknown)}; known: {', '.join(NEIGHBOURS)}")
        self.timesteps = tuple(timesteps)
        self.neighbours = tuple(neighbours)
        self.draws = draws

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f"neighbour_{name}_{nominal_timestep_label(t)}" for t in self.timesteps
                     for name in self.neighbours)

    def params(self) -> dict:
        return {"timesteps": list(self.timesteps), "neighbours": list(self.neighbours), "draws": self.draws,
                "shift_fraction": SHIFT_FRACTION, "jpeg_quality": JPEG_QUALITY}

    def plan(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> Plan:
        latents = [batch.z0, *(target.encode(NEIGHBOURS[name](batch.images)) for name in self.neighbours)]
        levels = {t: target.schedule.level(t) for t in self.timesteps}
        noises = {t: [noise.draw(batch, self.name, nominal_timestep_label(t), draw) for draw in range(self.draws)]
                  for t in self.timesteps}
        predictions = iter((yield [Forward(add_noise(target.schedule, z0, eps, levels[t]), levels[t], batch.condition)
                                   for t in self.timesteps for eps in noises[t] for z0 in latents]))
        columns = []
        for t in self.timesteps:
            losses = torch.zeros(len(latents), len(batch.hashes), dtype=torch.float64)
            for eps in noises[t]:
                for index in range(len(latents)):
                    losses[index] += per_image_norm(next(predictions) - eps).double().cpu()
            losses /= self.draws
            columns += list(losses[0] - losses[1:])  # one column per neighbour
        return torch.stack(columns, dim=1)
