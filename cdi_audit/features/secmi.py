"""SecMI_stat (Duan et al., ICML 2023): how far a deterministic round trip lands from its start."""

from __future__ import annotations

import itertools

import torch

from cdi_audit.features.base import Extractor, LatentBatch, NoiseSource, nominal_timestep_label
from cdi_audit.targets.base import Target, ddim_step, per_image_norm


class SecMI(Extractor):
    """||z_det - z_step|| with z_det = DDIM inversion 0 -> interval -> ... -> t, and
    z_step = Phi(Phi(z_det; t -> t + interval); t + interval -> t).

    The model is more consistent (smaller round-trip error) on images it fitted.
    Deterministic: uses no noise. Cost: t / interval + 2 forward passes per image.
    """

    name = "secmi"
    full_precision = True

    def __init__(self, timestep: int = 100, interval: int = 10) -> None:
        self.timestep = timestep
        self.interval = interval

    @property
    def columns(self) -> tuple[str, ...]:
        return (f"secmi_{nominal_timestep_label(self.timestep)}",)

    def params(self) -> dict:
        return {"timestep": self.timestep, "interval": self.interval}

    def extract(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> torch.Tensor:
        states = [target.model_timestep(t) for t in range(0, self.timestep + 1, self.interval)]
        z_det = batch.z0
        for s, s_next in itertools.pairwise(states):
            z_det = ddim_step(target, z_det, s, s_next, batch.condition)
        t, t_up = states[-1], target.model_timestep(self.timestep + self.interval)
        z_step = ddim_step(target, ddim_step(target, z_det, t, t_up, batch.condition), t_up, t, batch.condition)
        return per_image_norm(z_det - z_step).double().cpu().unsqueeze(1)
