"""CLiD, conditional likelihood discrepancy (Zhai et al., NeurIPS 2024): a conditional model overfits
p(x | c) more than p(x), so members lose more when their condition is weakened."""

from __future__ import annotations

import torch

from cdi_audit.features.base import Extractor, Forward, LatentBatch, NoiseSource, Plan
from cdi_audit.targets.base import Conditioning, Target, add_noise

# Timesteps per methods.md: around 450 for 512 px models, around 100 at 256 px and below.
SMALL_MODEL_TIMESTEPS = (90, 100, 110)
LARGE_MODEL_TIMESTEPS = (440, 450, 460)
SMALL_MODEL_MAX_SIZE = 256


class CLiD(Extractor):
    """With one (t, eps) per draw and e(c) = ||eps_theta(z_t, t, c) - eps||^2:

    D_i = e(c_i*) - e(c) for each reduced condition c_i*, and L = -e(c), averaged over the
    draws (one per timestep). Reduced conditions: for captions, the caption with its first,
    middle or last third of tokens replaced by the pad token, and the empty caption ("simple
    clipping"); for classes, the null class. Members have higher D and higher L. All
    conditions of a draw go through the model in one call. Cost per image: 3 x 5 forward
    passes (text) or 3 x 2 (class). Not applicable to unconditional models.
    """

    name = "clid"
    log_scaled = False  # differences of squared norms: any sign

    def __init__(self, conditioning: Conditioning = "text", timesteps: tuple[int, ...] = SMALL_MODEL_TIMESTEPS):
        self.conditioning = conditioning
        self.timesteps = tuple(timesteps)

    @classmethod
    def for_target(cls, target: Target) -> CLiD:
        large = target.sample_size > SMALL_MODEL_MAX_SIZE
        return cls(target.conditioning, LARGE_MODEL_TIMESTEPS if large else SMALL_MODEL_TIMESTEPS)

    def not_applicable(self, target: Target) -> str | None:
        if target.conditioning == "none":
            return "clid compares conditional and weakened conditions, and this model is unconditional"
        return None

    @property
    def reduced_names(self) -> tuple[str, ...]:
        return ("first", "middle", "last", "null") if self.conditioning == "text" else ("null",)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*(f"clid_d_{name}" for name in self.reduced_names), "clid_l")

    def params(self) -> dict:
        return {"conditioning": self.conditioning, "timesteps": list(self.timesteps), "reduction": "simple-clipping"}

    def plan(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> Plan:
        conditions = [batch.condition, *target.reduced_conditions(batch).values()]
        size = len(batch.hashes)
        stacked = torch.cat(conditions)
        steps = [target.model_timestep(nominal) for nominal in self.timesteps]
        draws = [noise.draw(batch, self.name, f"t{nominal}") for nominal in self.timesteps]
        predictions = yield [Forward(add_noise(batch.z0, eps, target.alpha_bar(t)).repeat(len(conditions), 1, 1, 1),
                                     t, stacked) for t, eps in zip(steps, draws, strict=True)]
        total = torch.zeros(size, len(conditions), dtype=torch.float64)
        for eps, predicted in zip(draws, predictions, strict=True):
            errors = (predicted - eps.repeat(len(conditions), 1, 1, 1)).flatten(1).pow(2).sum(dim=1)
            total += errors.double().cpu().view(len(conditions), size).T
        mean = total / len(self.timesteps)
        full = mean[:, :1]
        return torch.cat([mean[:, 1:] - full, -full], dim=1)
