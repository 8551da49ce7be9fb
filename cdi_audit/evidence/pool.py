"""Generations stored in the feature cache, so a pool is generated once per model and reused by every
later audit of that model, and an interrupted generation resumes where it stopped."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from cdi_audit.cache import FeatureStore
from cdi_audit.evidence.sampling import Guidance, ddim_sample, initial_noise, latent_shape
from cdi_audit.models.target import Target

# Bump when sampling changes what a seed generates.
SAMPLER_VERSION = "ddim-eta0-trailing-1"


def generation_key(target: Target, purpose: str, seed: int, steps: int, extra: dict | None = None) -> dict:
    """Everything that changes the generations of ``purpose`` ('pool', 'guided-3', ...)."""
    return {"kind": "side-generations", "model": target.description.fingerprint, "purpose": purpose, "seed": seed,
            "steps": steps, "sampler": SAMPLER_VERSION, "device": target.device.type,
            "dtype": target.description.dtype, **(extra or {})}


def generate(target: Target, purpose: str, count: int, seed: int, steps: int, batch_size: int,
             store: FeatureStore | None, extra_key: dict | None = None, guidance: Guidance | None = None,
             scale: float = 0.0, on_done: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``count`` clean latents for ``purpose`` (N, C, H, W) on the CPU, generated or read from ``store``.

    Sample i starts from its own seeded noise, so the result does not depend on ``batch_size`` (beyond
    float rounding) nor on which samples were stored before an interruption.
    """
    shape = latent_shape(target)
    section = store.section(generation_key(target, purpose, seed, steps, extra_key)) if store is not None else None
    known = section.load() if section is not None else {}
    names = [f"{purpose}-{index:06d}" for index in range(count)]
    missing = [index for index, name in enumerate(names) if name not in known]
    if on_done is not None:
        on_done(0, len(missing))
    for start in range(0, len(missing), batch_size):
        indices = missing[start : start + batch_size]
        noise = initial_noise(shape, seed, purpose, indices, target.device)
        latents = ddim_sample(target, noise, steps, guidance, scale).float().cpu()
        values = latents.flatten(1).double().numpy()
        known.update({names[i]: row for i, row in zip(indices, values, strict=True)})
        if section is not None:
            section.append([names[i] for i in indices], values)
        if on_done is not None:
            on_done(start + len(indices), len(missing))
    return torch.from_numpy(np.stack([known[name] for name in names])).float().view(count, *shape)


def to_images(target: Target, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Latents -> images in [-1, 1] on the CPU (the identity for pixel models), decoded batch by batch."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(latents), batch_size):
            parts.append(target.decode(latents[start : start + batch_size].to(target.device)).float().cpu())
    return torch.cat(parts).clamp(-1, 1)
