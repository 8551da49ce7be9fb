"""Gradient masking (CDI, Dubinski et al. CVPR 2025): how well the model restores its most sensitive entries."""

from __future__ import annotations

import torch

from cdi_audit.features.base import Extractor, LatentBatch, NoiseSource, nominal_timestep_label
from cdi_audit.features.multi_loss import DEFAULT_TIMESTEPS
from cdi_audit.models.primitives import add_noise, per_image_norm
from cdi_audit.models.target import Target


def top_fraction_mask(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask of the ``fraction`` of entries with the largest |value| in each image: (B, C, H, W)."""
    flat = values.detach().abs().flatten(1)
    k = int(flat.shape[1] * fraction)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, torch.topk(flat, k, dim=1).indices, True)
    return mask.view_as(values)


class GradientMasking(Extractor):
    """For each t, with one eps shared by all t (docs/method.md):

    g = d||eps_theta(z_t, t) - eps|| / d z_t; M = the 20% entries of largest |g|;
    z_masked = z0 (1 - M) + eps M; value = ||M ((eps - z0) - eps_theta(z_masked, t))||.

    The clean latent (not z_t) is masked, and the target is eps - z0, as in the
    CDI reference code. Cost: one forward and backward plus one forward per
    timestep. Needs gradients with respect to the input (white-box).
    """

    name = "gradient_masking"

    def __init__(self, timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS, mask_fraction: float = 0.2) -> None:
        self.timesteps = tuple(timesteps)
        self.mask_fraction = mask_fraction

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f"gradient_masking_{nominal_timestep_label(t)}" for t in self.timesteps)

    def params(self) -> dict:
        return {"timesteps": list(self.timesteps), "mask_fraction": self.mask_fraction}

    def extract(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> torch.Tensor:
        z0 = batch.z0
        eps = noise.draw(batch, self.name, "shared")
        values = []
        for nominal in self.timesteps:
            t = target.schedule.level(nominal)
            z_t = add_noise(target.schedule, z0, eps, t).requires_grad_(True)
            # Each image's loss depends only on its own input, so the gradient of
            # the sum is every image's own gradient.
            loss = per_image_norm(target.predict_noise(z_t, t, batch.condition) - eps).sum()
            (gradient,) = torch.autograd.grad(loss, z_t)
            mask = top_fraction_mask(gradient, self.mask_fraction)
            with torch.no_grad():
                predicted = target.predict_noise(torch.where(mask, eps, z0), t, batch.condition)
                values.append(per_image_norm(mask * ((eps - z0) - predicted)).double().cpu())
        return torch.stack(values, dim=1)
