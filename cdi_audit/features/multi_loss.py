"""Denoising loss across the whole schedule (CDI's ``multi_loss`` feature)."""

from __future__ import annotations

import torch

from cdi_audit.features.base import Extractor, Forward, LatentBatch, NoiseSource, Plan, nominal_timestep_label
from cdi_audit.models.primitives import add_noise, per_image_norm
from cdi_audit.models.target import Target

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
