"""Deterministic DDIM generation from a ``Target``, optionally steered by a guidance term.

Every sample starts from noise drawn by its own generator, seeded by (seed, purpose, index), so a
sample does not depend on which others share its batch: a pool can be generated in any batch size,
resumed after an interruption, and reproduced exactly from its seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from cdi_audit.models.primitives import clean_estimate
from cdi_audit.models.schedule import Level
from cdi_audit.models.target import Target

# (latents z_t, level l of the model's schedule) -> d log p(y | z_t) / d z_t, for classifier guidance.
Guidance = Callable[[torch.Tensor, Level], torch.Tensor]
DEFAULT_STEPS = 50


def sample_seed(seed: int, purpose: str, index: int) -> int:
    key = f"{seed}|{purpose}|{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & (2**63 - 1)


def initial_noise(shape: tuple[int, ...], seed: int, purpose: str, indices: range | list[int],
                  device: torch.device) -> torch.Tensor:
    """Standard normal starting points, one generator per sample, drawn on the CPU then moved."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(sample_seed(seed, purpose, i)))
                        for i in indices]).to(device)


def latent_shape(target: Target) -> tuple[int, int, int]:
    """The shape of one clean latent: the image itself for pixel models."""
    with torch.no_grad():
        probe = target.encode(torch.zeros(1, 3, target.sample_size, target.sample_size, device=target.device))
    return tuple(probe.shape[1:])


def ddim_sample(target: Target, noise: torch.Tensor, steps: int = DEFAULT_STEPS, guidance: Guidance | None = None,
                scale: float = 0.0) -> torch.Tensor:
    """Clean latents generated from ``noise`` by deterministic DDIM (eta 0) in ``steps`` steps.

    With ``guidance``, the noise prediction is shifted towards higher log p(y | z_t) (classifier
    guidance, Dhariwal and Nichol 2021): eps' = eps - scale * b * grad log p(y | z_t).
    """
    schedule = target.schedule
    timesteps = schedule.sampling_levels(steps)
    clip = not target.has_decoder  # pixel models: images live in [-1, 1]; latents are not bounded
    z = noise
    for position, t in enumerate(timesteps):
        with torch.no_grad():
            eps = target.predict_noise(z, t)
        if guidance is not None and scale != 0.0:
            eps = eps - scale * schedule.coefficients(t)[1] * guidance(z, t)
        clean = clean_estimate(schedule, z, eps, t)
        if clip:
            # As diffusers' DDIM scheduler does with clip_sample (the default of pixel DDPM pipelines), keeping
            # the unclipped noise for the direction; unclipped, the early estimates of a small model
            # overshoot and the samples degenerate into saturated noise.
            clean = clean.clamp(-1.0, 1.0)
        if position + 1 == len(timesteps):
            return clean.detach()  # the step to "a = 1": the clean estimate itself
        a_next, b_next = schedule.coefficients(timesteps[position + 1])
        z = a_next * clean + b_next * eps
    raise AssertionError("unreachable: a schedule has at least one step")
