"""Denoising loss across the whole schedule (CDI's ``multi_loss`` feature)."""

from __future__ import annotations

import torch

from cdi_audit.features.base import Extractor, Forward, LatentBatch, NoiseSource, Plan, nominal_timestep_label
from cdi_audit.models.primitives import add_noise, per_image_norm
from cdi_audit.models.target import Target

# Nominal DDPM timesteps, as CDI states them. On flow-matching models (SD3, Flux) they map by SNR to
# sigma 0.03, 0.26, 0.36, 0.45, 0.54, 0.62, 0.70, 0.77, 0.84, 0.89: the middle of the path, where flow models
# leak most, is covered (sigma 0.1-0.9; docs/flow-models.md). Measured on the tiny SD3 and Flux models
# (benchmarks/RESULTS.md, "Flow-matching models"): the per-level AUC peaks at sigma 0.26-0.45 and falls
# towards both ends, so the same grid serves every family.
DEFAULT_TIMESTEPS = tuple(range(0, 1000, 100))


class MultiTimestepLoss(Extractor):
    """||eps_theta(z_t, t) - eps|| for each t in ``timesteps``, with one eps shared by all t.

    Sharing the draw makes the columns differ only by t, so the scoring model
    sees how the loss profile over the schedule differs for members.
    Cost: one forward pass per timestep.
    """

    name = "multi_loss"

    def __init__(self, timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS) -> None:
        self.timesteps = tuple(timesteps)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f"multi_loss_{nominal_timestep_label(t)}" for t in self.timesteps)

    def params(self) -> dict:
        return {"timesteps": list(self.timesteps)}

    def plan(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> Plan:
        eps = noise.draw(batch, self.name, "shared")
        levels = [target.schedule.level(nominal) for nominal in self.timesteps]
        predictions = yield [Forward(add_noise(target.schedule, batch.z0, eps, level), level, batch.condition)
                             for level in levels]
        return torch.stack([per_image_norm(predicted - eps).double().cpu() for predicted in predictions], dim=1)
