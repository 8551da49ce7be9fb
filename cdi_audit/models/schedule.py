"""The noise process as data (docs/architecture.md, "The schedule").

Every family the tool audits noises a clean latent as z_t = a(l) z0 + b(l) eps at a level l of its own
schedule. Features are written for nominal levels: the timesteps of a 1000-step DDPM, as the papers state
them. A schedule maps a nominal level to its own level **of equal signal-to-noise ratio** a^2 / b^2, gives
a and b there, and the network's time input. Nothing outside this module reads ``alphas_cumprod`` or knows
how many steps a model was trained with: ``FlowMatchSchedule`` (a = 1 - sigma, b = sigma) serves
rectified-flow models without touching any feature.
"""

from __future__ import annotations

import abc
import math
from typing import Literal

import torch

# A level of a model's own schedule: an integer timestep for discrete schedules.
Level = int
# Which nominal DDPM a model's features are written against (docs/architecture.md, "The schedule"). A discrete schedule
# of exactly 1000 steps is its own nominal DDPM: the papers index each model's own 1000 timesteps (SecMI and CLiD on
# Stable Diffusion, CDI on DiT), so its levels are its timesteps. Any other schedule (another step count, flow matching)
# is matched by SNR to the DDPM of its kind: the linear 1e-4-0.02 schedule of DDPM for pixel models, Stable Diffusion's
# scaled-linear 0.00085-0.012 one for latent models.
NominalKind = Literal["pixel", "latent"]
NOMINAL_STEPS = 1000
NOMINAL_BETAS = {"pixel": ("linear", 1e-4, 0.02), "latent": ("scaled_linear", 0.00085, 0.012)}


def nominal_alphas_cumprod(kind: NominalKind) -> torch.Tensor:
    """abar_t of the nominal 1000-step DDPM of ``kind``, float64 (as diffusers' DDPMScheduler builds it)."""
    shape, start, end = NOMINAL_BETAS[kind]
    if shape == "linear":
        betas = torch.linspace(start, end, NOMINAL_STEPS, dtype=torch.float64)
    else:
        betas = torch.linspace(start**0.5, end**0.5, NOMINAL_STEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log(a^2 / b^2) = log(abar / (1 - abar)), float64."""
    abar = alphas_cumprod.double()
    return torch.log(abar) - torch.log1p(-abar)


class NoiseSchedule(abc.ABC):
    """z_t = a(l) z0 + b(l) eps at the levels l of one model's schedule."""

    @abc.abstractmethod
    def level(self, nominal: int) -> Level:
        """The level whose signal-to-noise ratio is nearest that of nominal timestep ``nominal``."""

    @abc.abstractmethod
    def coefficients(self, level: Level) -> tuple[float, float]:
        """(a, b) at one level."""

    @abc.abstractmethod
    def row_coefficients(self, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) for a (B,) tensor of levels, each (B,) float64 on the CPU."""

    @abc.abstractmethod
    def level_rows(self, level: Level, rows: int) -> torch.Tensor:
        """A (rows,) tensor of one level, in the dtype ``model_time`` expects."""

    @abc.abstractmethod
    def model_time(self, levels: torch.Tensor) -> torch.Tensor:
        """The network's time input for a (B,) tensor of levels."""

    @abc.abstractmethod
    def strength_level(self, strength: float) -> Level:
        """Where an image-to-image call of ``strength`` in [0, 1] starts (0: the clean image)."""

    @abc.abstractmethod
    def levels_down_from(self, start: Level, nominal_interval: int) -> list[Level]:
        """Levels from ``start`` down to the clean level, about ``nominal_interval`` nominal steps apart."""

    @abc.abstractmethod
    def sampling_levels(self, steps: int) -> list[Level]:
        """``steps`` levels for generation, from the noisiest down; the last one is the least noisy."""

    @abc.abstractmethod
    def random_levels(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` levels drawn uniformly over the schedule (training a surrogate on noised latents)."""

    @property
    @abc.abstractmethod
    def span(self) -> float:
        """The size of the level range (levels / span lies in [0, 1))."""

    @property
    @abc.abstractmethod
    def train_steps(self) -> int | None:
        """The number of discrete training timesteps, or None for a continuous schedule."""

    @abc.abstractmethod
    def identity(self) -> dict:
        """What fixes the mapping from nominal levels to this schedule (part of the feature cache key)."""


def nearest_levels(own_log_snr: torch.Tensor, nominal: NominalKind) -> list[Level]:
    """For each nominal level, the own level of nearest log-SNR; on a schedule equal to the nominal one every
    level maps to itself. In chunks of nominal levels, so a 100,000-step schedule needs no 800 MB distance
    matrix."""
    target = log_snr(nominal_alphas_cumprod(nominal))
    return [int(index) for chunk in target.split(64)
            for index in (own_log_snr[None, :] - chunk[:, None]).abs().argmin(dim=1)]


class DiscreteSchedule(NoiseSchedule):
    """A variance-preserving schedule given by ``alphas_cumprod`` (DDPM, DDIM, Euler-trained UNets, DiT,
    Stable Diffusion 1.x/2.x, SDXL): a = sqrt(abar_t), b = sqrt(1 - abar_t), the network takes integer t."""

    def __init__(self, alphas_cumprod: torch.Tensor, nominal: NominalKind) -> None:
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        self.nominal = nominal
        own = log_snr(self.alphas_cumprod)
        self._levels = list(range(NOMINAL_STEPS)) if len(own) == NOMINAL_STEPS else nearest_levels(own, nominal)

    @property
    def train_steps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def span(self) -> float:
        return float(self.train_steps)

    def level(self, nominal: int) -> Level:
        return self._levels[min(max(int(nominal), 0), NOMINAL_STEPS - 1)]

    def coefficients(self, level: Level) -> tuple[float, float]:
        abar = float(self.alphas_cumprod[level])
        return math.sqrt(abar), math.sqrt(1.0 - abar)

    def row_coefficients(self, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alphas_cumprod[levels.cpu().long()]
        return abar.sqrt(), (1.0 - abar).sqrt()

    def level_rows(self, level: Level, rows: int) -> torch.Tensor:
        return torch.full((rows,), int(level), dtype=torch.long)

    def model_time(self, levels: torch.Tensor) -> torch.Tensor:
        return levels.long()

    def strength_level(self, strength: float) -> Level:
        # As diffusers' image-to-image pipelines read strength: a fraction of the training timesteps.
        return min(round(strength * self.train_steps), self.train_steps - 1)

    def levels_down_from(self, start: Level, nominal_interval: int) -> list[Level]:
        step = max(self.level(nominal_interval), 1)
        return [*range(start, 0, -step), 0]

    def sampling_levels(self, steps: int) -> list[Level]:
        return trailing_timesteps(self.train_steps, steps)

    def random_levels(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.train_steps, (count,), generator=generator)

    def identity(self) -> dict:
        return {"kind": "discrete", "nominal": self.nominal, "steps": self.train_steps}


class FlowMatchSchedule(DiscreteSchedule):
    """Rectified flow (SD3, SD3.5, Flux; docs/flow-models.md): z_t = (1 - sigma) z0 + sigma eps, so
    a = 1 - sigma and b = sigma, at the sigmas of the model's own ``FlowMatchEulerDiscreteScheduler`` as it
    trains (its 1000-step grid, with the config's static ``shift`` applied; dynamic shifting is an inference
    setting and is left out). A level is an index into those sigmas, ascending; sigma = 1 (pure noise, a = 0,
    where no clean estimate exists) is left out, so the noisiest level is the grid's next sigma. The network's
    time input is sigma times ``time_scale``: 1000 for SD3 (its transformer takes the scheduler's timesteps),
    1 for Flux (its transformer multiplies by 1000 itself). Nominal levels map by equal log-SNR
    log((1 - sigma)^2 / sigma^2) to the latent nominal DDPM.

    It shares ``DiscreteSchedule``'s level arithmetic (levels are integer indices either way), its
    ``alphas_cumprod`` being the variance-preserving schedule of equal SNR, abar = a^2 / (a^2 + b^2); the
    coefficients and the time input are its own, and levels always map by SNR (a flow grid is never the
    nominal DDPM).
    """

    def __init__(self, sigmas: torch.Tensor, time_scale: float, shift: float = 1.0,
                 nominal: NominalKind = "latent") -> None:
        ascending = torch.sort(sigmas.detach().to("cpu", torch.float64)).values
        self.sigmas = ascending[(ascending > 0.0) & (ascending < 1.0)]
        self.time_scale = float(time_scale)
        self.shift = float(shift)
        self.nominal = nominal
        a, b = 1.0 - self.sigmas, self.sigmas
        self.alphas_cumprod = a**2 / (a**2 + b**2)
        self._levels = nearest_levels(log_snr(self.alphas_cumprod), nominal)

    @classmethod
    def from_scheduler(cls, scheduler, time_scale: float, nominal: NominalKind = "latent") -> FlowMatchSchedule:
        """The schedule of a ``FlowMatchEulerDiscreteScheduler`` as it was configured (before any
        ``set_timesteps``)."""
        config = scheduler.config
        fresh = type(scheduler).from_config(config)
        # With dynamic shifting (Flux) the shift depends on the image size at inference only; training is unshifted.
        shift = 1.0 if config.get("use_dynamic_shifting", False) else float(config.get("shift", 1.0))
        return cls(torch.as_tensor(fresh.sigmas), time_scale, shift, nominal)

    def coefficients(self, level: Level) -> tuple[float, float]:
        sigma = float(self.sigmas[level])
        return 1.0 - sigma, sigma

    def row_coefficients(self, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.sigmas[levels.cpu().long()]
        return 1.0 - sigma, sigma

    def model_time(self, levels: torch.Tensor) -> torch.Tensor:
        return (self.sigmas[levels.cpu().long()] * self.time_scale).float().to(levels.device)

    def identity(self) -> dict:
        return {"kind": "flow", "nominal": self.nominal, "steps": self.train_steps, "shift": self.shift,
                "time_scale": self.time_scale}


def trailing_timesteps(train_steps: int, steps: int) -> list[int]:
    """Timesteps from the noisiest down, evenly spaced: diffusers' "trailing" DDIM spacing (for 1000 and
    50: 999, 979, ..., 19), whose last step lands on the clean image."""
    if not 1 <= steps <= train_steps:
        raise ValueError(f"steps must be between 1 and {train_steps}")
    return [round(train_steps - i * train_steps / steps) - 1 for i in range(steps)]
