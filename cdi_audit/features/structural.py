"""Structural membership inference (Qiao Li et al., ACM MM 2024): how much of an image's structure
survives a short deterministic DDIM inversion."""

from __future__ import annotations

import torch

from cdi_audit.features.base import Extractor, LatentBatch, NoiseSource, nominal_timestep_label
from cdi_audit.models.primitives import clean_estimate, model_step
from cdi_audit.models.target import Target

SSIM_WINDOW = 7


def ssim(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of images in [0, 1], (B, 3, H, W) -> (B,): 7x7 uniform window, data range 1.

    torchmetrics computes the SSIM map; we average it over the windows that lie wholly inside
    the image (a border of 3 pixels is left out), as scikit-image does, so padded border
    windows do not dilute small images.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(
        first.double(), second.double(), gaussian_kernel=False, kernel_size=SSIM_WINDOW, data_range=1.0,
        reduction="none", return_full_image=True,
    )
    border = (SSIM_WINDOW - 1) // 2
    return full[..., border:-border, border:-border].flatten(1).mean(dim=1)


class Structural(Extractor):
    """SSIM between the image and what the model makes of it after inverting to t, for each t.

    Latent models: z0 -> Phi(.; 0 -> 50) -> Phi(.; 50 -> 100) (-> 150 -> 200), then decode
    x_hat = D(z_t). Pixel models have no decoder, so x_hat is the model's predicted clean
    image at the inverted state, (z_t - b eps_theta(z_t)) / a. Members
    keep their structure better (higher SSIM). Deterministic: uses no noise; always fp32.
    Cost: 4 forward passes and 2 decodes (latent) or 6 forward passes (pixel) per image.
    """

    name = "structural"
    full_precision = True
    log_scaled = False  # SSIM lies in [-1, 1]

    def __init__(self, timesteps: tuple[int, ...] = (100, 200), interval: int = 50) -> None:
        self.timesteps = tuple(timesteps)
        self.interval = interval

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f"structural_ssim_{nominal_timestep_label(t)}" for t in self.timesteps)

    def params(self) -> dict:
        return {"timesteps": list(self.timesteps), "interval": self.interval, "ssim_window": SSIM_WINDOW}

    def extract(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> torch.Tensor:
        original = (batch.images.double().clamp(-1, 1) + 1) / 2
        z, state, values = batch.z0, target.schedule.level(0), []
        for nominal in range(self.interval, max(self.timesteps) + 1, self.interval):
            next_state = target.schedule.level(nominal)
            z = model_step(target, z, state, next_state, batch.condition)
            state = next_state
            if nominal in self.timesteps:
                values.append(ssim((self._reconstruct(target, z, state, batch) + 1) / 2, original).cpu())
        return torch.stack(values, dim=1)

    @staticmethod
    def _reconstruct(target: Target, z: torch.Tensor, state: int, batch: LatentBatch) -> torch.Tensor:
        if target.has_decoder:
            return target.decode(z).double().clamp(-1, 1)
        predicted = target.predict_noise(z, state, batch.condition)
        return clean_estimate(target.schedule, z, predicted, state).double().clamp(-1, 1)
