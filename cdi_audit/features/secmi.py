"""SecMI_stat (Duan et al., ICML 2023): how far a deterministic round trip lands from its start."""

from __future__ import annotations

import itertools

from cdi_audit.features.base import Extractor, Forward, LatentBatch, NoiseSource, Plan, nominal_timestep_label
from cdi_audit.models.primitives import deterministic_step, per_image_norm
from cdi_audit.models.target import Target


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

    def plan(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> Plan:
        schedule = target.schedule
        states = [schedule.level(t) for t in range(0, self.timestep + 1, self.interval)]
        t, t_up = states[-1], schedule.level(self.timestep + self.interval)
        z_det = batch.z0
        for s, s_next in itertools.pairwise(states):
            (eps,) = yield [Forward(z_det, s, batch.condition)]
            z_det = deterministic_step(schedule, z_det, eps, s, s_next)
        (eps,) = yield [Forward(z_det, t, batch.condition)]
        z_up = deterministic_step(schedule, z_det, eps, t, t_up)
        (eps,) = yield [Forward(z_up, t_up, batch.condition)]
        z_step = deterministic_step(schedule, z_up, eps, t_up, t)
        return per_image_norm(z_det - z_step).double().cpu().unsqueeze(1)
