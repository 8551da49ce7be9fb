"""CLiD, conditional likelihood discrepancy (Zhai et al., NeurIPS 2024): a conditional model overfits
p(x | c) more than p(x), so members lose more when their condition is weakened."""

from __future__ import annotations

import torch

from cdi_audit.features.base import Extractor, Forward, LatentBatch, NoiseSource, Plan
from cdi_audit.models.condition import Condition
from cdi_audit.models.primitives import add_noise
from cdi_audit.models.target import Conditioning, Target

# Timesteps (docs/method.md): around 450 for 512 px models, around 100 at 256 px and below.
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
        conditions = [batch.condition, *self.weakened(target, batch)]
        size = len(batch.hashes)
        stacked = Condition.cat(conditions)
        levels = [target.schedule.level(nominal) for nominal in self.timesteps]
        draws = [noise.draw(batch, self.name, f"t{nominal}") for nominal in self.timesteps]
        predictions = yield [Forward(add_noise(target.schedule, batch.z0, eps, level).repeat(len(conditions), 1, 1, 1),
                                     level, stacked) for level, eps in zip(levels, draws, strict=True)]
        total = torch.zeros(size, len(conditions), dtype=torch.float64)
        for eps, predicted in zip(draws, predictions, strict=True):
            errors = (predicted - eps.repeat(len(conditions), 1, 1, 1)).flatten(1).pow(2).sum(dim=1)
            total += errors.double().cpu().view(len(conditions), size).T
        mean = total / len(self.timesteps)
        full = mean[:, :1]
        return torch.cat([mean[:, 1:] - full, -full], dim=1)

    def weakened(self, target: Target, batch: LatentBatch) -> list[Condition]:
        """The reduced conditions, in the order of ``reduced_names``: for captions, each third of every
        tokenizer's caption tokens replaced by its pad token (the rest of the condition, such as SDXL's
        sizes, kept), then the pipeline's null condition; for classes, the null class."""
        reduced = []
        if self.conditioning == "text":
            tokens = target.tokenize(list(batch.captions))
            for part in range(3):
                clipped = {name: clipped_tokens(t.ids, part, t.eos_id, t.pad_id, t.start) for name, t in tokens.items()}
                reduced.append(batch.condition.replaced(**target.encode_tokens(clipped)))
        return [*reduced, target.null_condition(batch.condition)]


def clipped_tokens(ids: torch.Tensor, part: int, eos_id: int, pad_id: int, start: int = 1) -> torch.Tensor:
    """``ids`` with the ``part``-th third (0, 1, 2) of each caption's tokens set to ``pad_id``.

    A caption's tokens are those from ``start`` (1 after CLIP's BOS, 0 for T5, which has none) to its
    first EOS; thirds split n tokens at round(n / 3) and round(2 n / 3), so a short caption may have an
    empty third.
    """
    clipped = ids.clone()
    for row in clipped:
        ends = (row == eos_id).nonzero()
        count = int(ends[0]) - start if len(ends) else len(row) - start
        bounds = [start + round(count * k / 3) for k in range(4)]
        row[bounds[part] : bounds[part + 1]] = pad_id
    return clipped
