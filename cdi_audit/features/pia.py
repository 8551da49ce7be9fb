"""PIA and PIAN (Kong et al., ICLR 2024): proximal initialisation with the model's own noise."""

from __future__ import annotations

import math

import torch

from cdi_audit.features.base import Extractor, Forward, LatentBatch, NoiseSource, Plan, nominal_timestep_label
from cdi_audit.models.primitives import add_noise, per_image_norm
from cdi_audit.models.target import Target

# Mean absolute value of a standard Gaussian. The CDI reference code rescales
# with sqrt(pi / 2) instead, a slip we do not copy (docs/method.md).
GAUSSIAN_MEAN_ABS = math.sqrt(2.0 / math.pi)


class PIA(Extractor):
    """Two columns from one shared e0 = eps_theta(z0, 0):

    - ``pia``:  ||e0 - eps_theta(sqrt(a_t) z0 + sqrt(1 - a_t) e0, t)||_p
    - ``pian``: the same with e0 rescaled per image so that mean(|e0|) = sqrt(2 / pi).

    A model that fitted an image predicts a consistent noise along the
    deterministic path it defines. Cost: 3 forward passes per image.
    """

    name = "pia"

    def __init__(self, timestep: int = 200, order: float = 5.0) -> None:
        self.timestep = timestep
        self.order = order

    @property
    def columns(self) -> tuple[str, ...]:
        label = nominal_timestep_label(self.timestep)
        return (f"pia_{label}", f"pian_{label}")

    def params(self) -> dict:
        return {"timestep": self.timestep, "order": self.order}

    def plan(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> Plan:
        (e0,) = yield [Forward(batch.z0, target.schedule.level(0), batch.condition)]
        mean_abs = e0.abs().flatten(1).mean(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        normalised = e0 * (GAUSSIAN_MEAN_ABS / mean_abs)
        t = target.schedule.level(self.timestep)
        starts = (e0, normalised)
        predictions = yield [Forward(add_noise(target.schedule, batch.z0, start, t), t, batch.condition)
                             for start in starts]
        return torch.stack([per_image_norm(start - predicted, self.order).double().cpu()
                            for start, predicted in zip(starts, predictions, strict=True)], dim=1)
