"""ReDiffuse (Li, Dong, He, Zhang, ICML 2025): the black-box feature.

An image-to-image "variation" call V(x) noises x to timestep t and denoises it back. Members
come back closer to themselves: average n variations drawn with independent seeds and measure
the distance of the average to the image (docs/method.md). On latent models the average
is compared with the model's own reconstruction of the image (a call at strength 0), which
takes the autoencoder's error out of the distance. The paper classifies the distances with a
classifier trained on labelled members; we have none, and the audit's scoring model plays
that role.
"""

from __future__ import annotations

import numpy as np
import torch

from cdi_audit.blackbox.variation import (
    BlackBoxTarget,
    VariationRequest,
    local_black_box,
    pixels_to_uint8,
    uint8_to_pixels,
)
from cdi_audit.features.base import Extractor, LatentBatch, NoiseSource
from cdi_audit.features.structural import ssim
from cdi_audit.models.schedule import NOMINAL_STEPS
from cdi_audit.models.target import Target

# Pixel models t=200 with n=10; latent models t in 10..50 with n in 1..2 (docs/method.md).
PIXEL_DEFAULTS = {"timestep": 200, "draws": 10}
LATENT_DEFAULTS = {"timestep": 30, "draws": 2}


def rediffuse_distances(variations: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B, n, 3, H, W) variations and (B, 3, H, W) references, both in [-1, 1] -> (B, 3):
    L2 and L1 norms of (mean variation - reference) over all entries, and their SSIM on [0, 1]."""
    mean = variations.double().mean(dim=1)
    reference = reference.double()
    difference = (mean - reference).flatten(1)
    return torch.stack([
        torch.linalg.vector_norm(difference, ord=2, dim=1),
        torch.linalg.vector_norm(difference, ord=1, dim=1),
        ssim((mean + 1) / 2, (reference + 1) / 2),
    ], dim=1)


class ReDiffuse(Extractor):
    """Distances of the average of ``draws`` variations at ``timestep`` to the image (or, with
    ``compare_reconstruction``, to the model's reconstruction of it). Black-box: needs only ``vary``.
    Cost: ``draws`` calls per image (one more for the reconstruction on latent models)."""

    name = "rediffuse"
    columns = ("rediffuse_l2", "rediffuse_l1", "rediffuse_ssim")
    log_columns = ("rediffuse_l2", "rediffuse_l1")  # SSIM lies in [-1, 1] and is used as it is

    def __init__(self, timestep: int = 200, draws: int = 10, compare_reconstruction: bool = False) -> None:
        self.timestep = timestep
        self.draws = draws
        self.compare_reconstruction = compare_reconstruction

    @classmethod
    def for_target(cls, target: Target | BlackBoxTarget) -> ReDiffuse:
        if target.has_decoder:
            return cls(**LATENT_DEFAULTS, compare_reconstruction=True)
        return cls(**PIXEL_DEFAULTS)

    def params(self) -> dict:
        return {"strength": self.strength, "draws": self.draws, "compare_reconstruction": self.compare_reconstruction}

    @property
    def strength(self) -> float:
        """The variation's strength for the nominal ``timestep``: the share of a 1000-step schedule it noises
        (each back end maps strength to its own schedule, ``NoiseSchedule.strength_level``)."""
        return self.timestep / NOMINAL_STEPS

    def extract(self, target: Target | BlackBoxTarget, batch: LatentBatch, noise: NoiseSource) -> torch.Tensor:
        source = target if isinstance(target, BlackBoxTarget) else local_black_box(target)
        images = pixels_to_uint8(batch.images)
        conditions = self._conditions(batch)
        requests = [
            VariationRequest(image, self.strength, noise.generator_seed(image_hash, self.name, "variation", draw)
                             & (2**31 - 1), *condition)
            for image, image_hash, condition in zip(images, batch.hashes, conditions, strict=True)
            for draw in range(self.draws)
        ]
        if self.compare_reconstruction:
            requests += [VariationRequest(image, 0.0, 0, *condition)
                         for image, condition in zip(images, conditions, strict=True)]
        outputs = uint8_to_pixels(np.stack(source.vary_many(requests)))
        count = len(images)
        variations = outputs[: count * self.draws].reshape(count, self.draws, *outputs.shape[1:])
        reference = outputs[count * self.draws :] if self.compare_reconstruction else uint8_to_pixels(images)
        return rediffuse_distances(variations, reference)

    @staticmethod
    def _conditions(batch: LatentBatch) -> list[tuple[str | None, int | None]]:
        """(prompt, class label) per image, as each request carries them."""
        count = len(batch.hashes)
        prompts = list(batch.captions) if batch.captions is not None else [None] * count
        if batch.condition is not None and "class_labels" in batch.condition:
            labels = [int(label) for label in batch.condition["class_labels"].cpu()]
        else:
            labels = [None] * count
        return list(zip(prompts, labels, strict=True))
