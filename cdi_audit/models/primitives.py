"""The operations every feature and sampler is built from, in the (a, b) form of any schedule.

z_t = a z0 + b eps; the clean estimate z0_hat = (z - b eps_hat) / a; the deterministic step from level s to
s' keeps eps_hat and moves z0_hat: z' = a' z0_hat + b' eps_hat (DDIM for variance-preserving schedules,
exactly the Euler ODE step for flow matching).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cdi_audit.models.condition import Condition
from cdi_audit.models.schedule import Level, NoiseSchedule

if TYPE_CHECKING:
    from cdi_audit.models.target import Target


def add_noise(schedule: NoiseSchedule, z0: torch.Tensor, noise: torch.Tensor, level: Level) -> torch.Tensor:
    """Forward diffusion in closed form: z_t = a z0 + b noise."""
    a, b = schedule.coefficients(level)
    return a * z0 + b * noise


def clean_estimate(schedule: NoiseSchedule, z: torch.Tensor, eps: torch.Tensor, level: Level) -> torch.Tensor:
    """z0_hat = (z - b eps) / a: the clean latent the noise prediction ``eps`` at (z, level) implies."""
    a, b = schedule.coefficients(level)
    return (z - b * eps) / a


def deterministic_step(schedule: NoiseSchedule, z: torch.Tensor, eps: torch.Tensor, level: Level,
                       next_level: Level) -> torch.Tensor:
    """The step from ``level`` to ``next_level`` given the noise prediction ``eps`` at (z, level): towards
    more noise it inverts, towards less it denoises."""
    a_next, b_next = schedule.coefficients(next_level)
    return a_next * clean_estimate(schedule, z, eps, level) + b_next * eps


def model_step(target: Target, z: torch.Tensor, level: Level, next_level: Level,
               condition: Condition | None = None) -> torch.Tensor:
    """``deterministic_step`` with the target's own noise prediction at (z, level)."""
    return deterministic_step(target.schedule, z, target.predict_noise(z, level, condition), level, next_level)


def per_image_norm(values: torch.Tensor, order: float = 2.0) -> torch.Tensor:
    """The L_p norm over all C*H*W entries of each image (not squared, not averaged): (B,)."""
    return torch.linalg.vector_norm(values.flatten(1), ord=order, dim=1)
