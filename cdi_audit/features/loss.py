"""Denoising loss at one timestep (CDI's ``loss`` feature; the classic loss attack)."""

from __future__ import annotations

import torch

from cdi_audit.features.base import Extractor, Forward, LatentBatch, NoiseSource, Plan, nominal_timestep_label
from cdi_audit.models.primitives import add_noise, per_image_norm
from cdi_audit.models.target import Target


class DenoisingLoss(Extractor):
    """Mean over ``draws`` noise draws of ||eps_theta(z_t, t) - eps|| at one timestep.

    Members were fitted by the model, so their loss tends to be lower.
    Cost: ``draws`` forward passes per image.
    """

    name = "loss"

    def __init__(self, timestep: int = 100, draws: int = 5) -> None:
        self.timestep = timestep
        self.draws = draws

    @property
    def columns(self) -> tuple[str, ...]:
        return (f"loss_{nominal_timestep_label(self.timestep)}",)

    def params(self) -> dict:
        return {"timestep": self.timestep, "draws": self.draws}

    def plan(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> Plan:
        level = target.schedule.level(self.timestep)
        draws = [noise.draw(batch, self.name, f"t{self.timestep}", draw) for draw in range(self.draws)]
        predictions = yield [Forward(add_noise(target.schedule, batch.z0, eps, level), level, batch.condition)
                             for eps in draws]
        total = torch.zeros(len(batch.hashes), dtype=torch.float64)
        for eps, predicted in zip(draws, predictions, strict=True):
            total += per_image_norm(predicted - eps).double().cpu()
        return (total / self.draws).unsqueeze(1)
